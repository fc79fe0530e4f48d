/*
 * server_epoll.c - single-threaded, edge-triggered epoll echo server (RFC 862).
 *
 * Every accepted socket is registered once with EPOLLIN|EPOLLOUT|EPOLLRDHUP|
 * EPOLLET and never modified again, so the hot path makes no epoll_ctl calls.
 * An edge only says "this socket may have become readable or writable"; we
 * remember that in per-connection flags until recv/send returns EAGAIN, and a
 * FIFO run queue decides who does I/O next.  Each connection gets at most
 * epoll_budget recv/send operations per turn, so one fast client cannot
 * starve the others, and its fixed buffer bounds what a client that never
 * reads can make us hold.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../echo_core.h"
#include "../net.h"
#include "../work.h"

#define MAX_EVENTS	512		/* events harvested per epoll_wait */
#define ACCEPT_BATCH	64		/* accepts per turn: a connect storm must not starve echoing */
#define ACCEPT_RETRY_MS	100		/* wait before retrying accept after EMFILE and co. */
#define MAX_SLOTS	EC_MAX_CONNS	/* table cap when RLIMIT_NOFILE is huge or infinite */

enum accept_state {
	ACCEPT_ON,
	ACCEPT_FULL,	/* conns_active == limit: resume when a connection closes */
	ACCEPT_ERROR,	/* out of fds or memory: resume on close, or after a quiet wait */
};

struct conn {
	char *buf;		/* NULL while the slot is free */
	uint32_t start, end;	/* the pending echo is buf[start, end) */
	bool readable;		/* no recv EAGAIN since the last EPOLLIN edge */
	bool writable;		/* no send EAGAIN since the last EPOLLOUT edge */
	bool eof;		/* recv returned 0: the client shut down its sending side */
	bool hup;		/* an RDHUP/HUP/ERR edge came: EOF or an error is waiting */
	bool in_queue;
	uint32_t interest;	/* level-triggered: the events watched now (see lt_watch) */
	uint64_t work_bytes;	/* received so far (server work per message) */
};

struct server {
	int epfd, listen_fd, stop_fd;
	uint32_t buf_size, budget;
	uint64_t spin_ns;	/* poll this long before a blocking wait (0: block at once) */
	bool level;		/* level-triggered (epoll_level): watch only what a connection can use */
	uint32_t nslots;	/* conns[] is indexed by fd */
	uint32_t limit;		/* max concurrent connections, <= nslots */
	uint32_t nconns;	/* open connections (stats are for others to read) */
	struct conn *conns;
	int *queue;		/* run queue ring of fds; each conn is in it at most once */
	uint32_t q_head, q_len;
	bool listen_ready;	/* the listener may have connections we have not accepted */
	enum accept_state accept_state;
	uint64_t retry_at_ms;	/* ACCEPT_ERROR: retry accepting by then even if nothing closes */
	struct ec_work work;	/* what to do with received bytes before echoing them */
	struct ec_server_stats *st;
};

static uint32_t pending(const struct conn *c)
{
	return c->end - c->start;
}

/* Can a recv or send on this connection make progress right now? */
static bool has_io(const struct server *s, const struct conn *c)
{
	uint32_t n = pending(c);

	if (c->writable && n > 0)
		return true;
	return c->readable && !c->eof && n < s->buf_size;
}

/*
 * Level-triggered: watch EPOLLIN only while there is room to read (and no
 * EOF yet), EPOLLOUT only while a send is blocked -- else epoll would
 * report a full or finished connection at every wait.  One epoll_ctl when
 * that changes: the price a level-triggered server pays.  Returns 0 or -errno.
 */
static int lt_watch(struct server *s, int fd)
{
	struct conn *c = &s->conns[fd];
	struct epoll_event ev = { .data.fd = fd };
	uint32_t want = 0;

	if (!s->level)
		return 0;
	if (!c->eof && pending(c) < s->buf_size)
		want |= EPOLLIN | EPOLLRDHUP;
	if (pending(c) > 0 && !c->writable)
		want |= EPOLLOUT;
	if (want == c->interest)
		return 0;
	ev.events = want;
	if (epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ev))
		return -errno;
	c->interest = want;
	return 0;
}

static void queue_push(struct server *s, int fd)
{
	uint32_t tail = s->q_head + s->q_len;

	if (tail >= s->limit)
		tail -= s->limit;
	s->queue[tail] = fd;
	s->q_len++;
	s->conns[fd].in_queue = true;
}

static int queue_pop(struct server *s)
{
	int fd = s->queue[s->q_head];

	if (++s->q_head == s->limit)
		s->q_head = 0;
	s->q_len--;
	s->conns[fd].in_queue = false;
	return fd;
}

/* Only called for a connection that is not queued (we just popped it). */
static void close_conn(struct server *s, int fd)
{
	struct conn *c = &s->conns[fd];

	/*
	 * close() drops the epoll registration.  If a fork elsewhere in the
	 * process still holds the file, a stale event for a reused fd only sets
	 * hint flags, which the next EAGAIN clears.
	 */
	close(fd);
	free(c->buf);
	memset(c, 0, sizeof(*c));
	s->nconns--;
	s->st->conns_active = s->nconns;
	s->st->conns_closed++;

	/*
	 * The listener is edge-triggered: connections that queued up while we
	 * were paused raise no new event, so we have to go and look ourselves.
	 */
	if (s->accept_state != ACCEPT_ON) {
		s->accept_state = ACCEPT_ON;
		s->listen_ready = true;
	}
}

/* One recv into the free tail of the buffer. Returns 0 or -errno. */
static int do_recv(struct server *s, struct conn *c, int fd)
{
	uint32_t n, want;
	ssize_t r;

	/*
	 * Slide the backlog down only when it blocks the tail.  That is rare
	 * (the peer must be slower than us), and it keeps every send a single
	 * contiguous range, unlike a ring buffer.
	 */
	if (c->end == s->buf_size && c->start > 0) {
		n = pending(c);
		memmove(c->buf, c->buf + c->start, n);
		c->start = 0;
		c->end = n;
	}
	want = s->buf_size - c->end;
	do {
		s->st->recv_calls++;
		r = recv(fd, c->buf + c->end, want, 0);
	} while (r < 0 && errno == EINTR);

	if (r > 0) {
		/*
		 * A short read emptied the socket: data arriving later raises a
		 * new edge, so skip the recv that would only say EAGAIN.  Not so
		 * after a hang-up edge, which will not come again: read on to EOF.
		 */
		if ((uint32_t)r < want && !c->hup)
			c->readable = false;
		ec_work_on_recv(&s->work, s->st, &c->work_bytes, (const unsigned char *)c->buf + c->end, (uint64_t)r);
		c->end += (uint32_t)r;
		ec_count_recv(s->st, (uint64_t)r);
		n = pending(c);
		if (n > s->st->pending_bytes_max)
			s->st->pending_bytes_max = n;
		return 0;
	}
	if (r == 0) {
		c->eof = true;
		return 0;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK) {
		c->readable = false;
		return 0;
	}
	return -errno;
}

/* One send of the whole pending range. Returns 0 or -errno. */
static int do_send(struct server *s, struct conn *c, int fd)
{
	uint32_t n = pending(c);
	ssize_t r;

	do {
		s->st->send_calls++;
		/* MSG_NOSIGNAL: a vanished peer is EPIPE for this conn, not SIGPIPE for us. */
		r = send(fd, c->buf + c->start, n, MSG_NOSIGNAL);
	} while (r < 0 && errno == EINTR);

	if (r > 0) {
		/* A short send filled the socket buffer; EPOLLOUT comes when it drains. */
		if ((uint32_t)r < n) {
			s->st->short_sends++;
			c->writable = false;
		}
		c->start += (uint32_t)r;
		s->st->bytes_out += (uint64_t)r;
		if (c->start == c->end)
			c->start = c->end = 0;
		return 0;
	}
	if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		c->writable = false;
		return 0;
	}
	/* send() never returns 0 for n > 0 on TCP; treat it as an error anyway. */
	return r < 0 ? -errno : -EIO;
}

/*
 * Run up to budget recv/send operations on one connection.  A pending echo
 * is sent before reading more, so every recv is followed straight away by
 * the send of what it read.  Returns true if the connection was closed.
 */
static bool serve_conn(struct server *s, int fd)
{
	struct conn *c = &s->conns[fd];
	uint32_t ops;
	int ret = 0;

	for (ops = 0; ops < s->budget && !ret; ops++) {
		if (c->writable && pending(c) > 0)
			ret = do_send(s, c, fd);
		else if (c->readable && !c->eof && pending(c) < s->buf_size)
			ret = do_recv(s, c, fd);
		else
			break;
	}
	if (ret < 0) {
		s->st->conn_errors++;
		close_conn(s, fd);
		return true;
	}
	/* Half-close: the client has read everything once the backlog is gone. */
	if (c->eof && pending(c) == 0) {
		close_conn(s, fd);
		return true;
	}
	if (lt_watch(s, fd)) {
		s->st->conn_errors++;
		close_conn(s, fd);
		return true;
	}
	/*
	 * Full buffer and the peer is not draining: we stop reading it (it is
	 * not requeued) until an EPOLLOUT edge lets the backlog move again.
	 */
	if (!c->eof && pending(c) == s->buf_size && !c->writable)
		s->st->backpressure_pauses++;
	return false;
}

/* Serve the connections queued at the start of this round, once each. */
static void run_queue(struct server *s)
{
	uint32_t n = s->q_len;
	int fd;

	while (n--) {
		fd = queue_pop(s);
		if (serve_conn(s, fd))
			continue;
		if (has_io(s, &s->conns[fd]))
			queue_push(s, fd);
	}
}

static void conn_event(struct server *s, int fd, uint32_t events)
{
	struct conn *c;

	if (fd < 0 || (uint32_t)fd >= s->nslots || !s->conns[fd].buf)
		return;
	c = &s->conns[fd];
	/* Hang-ups and errors are reported by the next recv or send: let both run. */
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->readable = true;
	if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
		c->hup = true;
	if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
		c->writable = true;
	if (!c->in_queue && has_io(s, c))
		queue_push(s, fd);
}

/* Set up a freshly accepted socket. Returns 0 or -errno (caller closes fd). */
static int add_conn(struct server *s, int fd)
{
	/* Edge-triggered: both directions, once.  Level-triggered: what lt_watch says. */
	struct epoll_event ev = {
		.events = s->level ? EPOLLIN | EPOLLRDHUP : EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		.data.fd = fd,
	};
	struct conn *c;
	int one = 1, ret;

	if ((uint32_t)fd >= s->nslots)
		return -EMFILE;
	c = &s->conns[fd];
	c->buf = malloc(s->buf_size);
	if (!c->buf)
		return -ENOMEM;
	/*
	 * Linux copies TCP_NODELAY from the listener, but say it explicitly:
	 * Nagle plus delayed ACKs would add ~40 ms to every partial echo.  A
	 * failure here only costs latency, so it is not fatal.
	 */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev)) {
		ret = -errno;
		free(c->buf);
		c->buf = NULL;
		return ret;
	}
	if (s->level) {
		/* No EPOLLOUT edge will say so: a new socket can be written to. */
		c->interest = ev.events;
		c->writable = true;
	}
	s->nconns++;
	s->st->conns_accepted++;
	s->st->conns_active = s->nconns;
	return 0;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void pause_accept(struct server *s, enum accept_state why)
{
	s->accept_state = why;
	s->st->accept_pauses++;
	if (why == ACCEPT_ERROR)
		s->retry_at_ms = now_ms() + ACCEPT_RETRY_MS;
}

/* Milliseconds until the accept retry is due (0 if it is). */
static int retry_wait_ms(const struct server *s)
{
	uint64_t now = now_ms();

	return now >= s->retry_at_ms ? 0 : (int)(s->retry_at_ms - now);
}

/* Accept up to ACCEPT_BATCH connections; leaves listen_ready set if there may be more. */
static void accept_batch(struct server *s)
{
	int i, fd;

	for (i = 0; i < ACCEPT_BATCH; i++) {
		if (s->nconns >= s->limit) {
			pause_accept(s, ACCEPT_FULL);
			return;
		}
		s->st->accept_calls++;
		fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			if (add_conn(s, fd) == 0)
				continue;
			/* No slot, buffer or watch for it: the client sees a close. */
			close(fd);
			s->st->accept_errors++;
			pause_accept(s, ACCEPT_ERROR);
			return;
		}
		switch (errno) {
		case EINTR:
			continue;
		case EAGAIN:
			s->listen_ready = false;
			return;
		case EMFILE:
		case ENFILE:
		case ENOBUFS:
		case ENOMEM:
			s->st->accept_errors++;
			pause_accept(s, ACCEPT_ERROR);
			return;
		case ECONNABORTED:
		case EPROTO:
		case EPERM:
		case ENETDOWN:
		case ENETUNREACH:
		case EHOSTUNREACH:
			/* That one connection failed; the next may be fine. */
			s->st->accept_errors++;
			continue;
		default:
			/* e.g. EINVAL (listener shut down): wait for an edge, do not spin. */
			s->st->accept_errors++;
			s->listen_ready = false;
			return;
		}
	}
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * epoll_wait, counted.  Where the loop would block (timeout -1) and spinning is
 * asked for, poll with timeout 0 for up to spin_ns first: a request that comes
 * within that time is served without a sleep and a wake-up, at the price of the
 * CPU the polling burns (the counterpart of io_uring's batched wait).  The stop
 * pipe is in the set, so a spin ends on stop too.
 */
static int wait_events(struct server *s, struct epoll_event *events, int timeout)
{
	uint64_t deadline;
	int n;

	if (timeout == -1 && s->spin_ns) {
		deadline = now_ns() + s->spin_ns;
		do {
			s->st->wait_calls++;
			n = epoll_wait(s->epfd, events, MAX_EVENTS, 0);
			if (n)
				return n;
		} while (now_ns() < deadline);
	}
	s->st->wait_calls++;
	return epoll_wait(s->epfd, events, MAX_EVENTS, timeout);
}

static int run_loop(struct server *s)
{
	struct epoll_event events[MAX_EVENTS];
	int i, n, fd, timeout;

	for (;;) {
		timeout = -1;
		if (s->q_len || (s->listen_ready && s->accept_state == ACCEPT_ON))
			timeout = 0;
		else if (s->accept_state == ACCEPT_ERROR)
			timeout = retry_wait_ms(s);

		n = wait_events(s, events, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		s->st->loop_iterations++;
		s->st->completions += (uint64_t)n;

		for (i = 0; i < n; i++) {
			fd = events[i].data.fd;
			if (fd == s->stop_fd)
				return 0;
			if (fd == s->listen_fd)
				s->listen_ready = true;
			else
				conn_event(s, fd, events[i].events);
		}
		/*
		 * Out of fds or memory: a close of ours resumes accepting (see
		 * close_conn), but the shortage may be elsewhere in the process,
		 * so retry every ACCEPT_RETRY_MS too, busy or not.
		 */
		if (s->accept_state == ACCEPT_ERROR && !retry_wait_ms(s)) {
			s->accept_state = ACCEPT_ON;
			s->listen_ready = true;
		}
		if (s->listen_ready && s->accept_state == ACCEPT_ON)
			accept_batch(s);
		run_queue(s);
	}
}

static void server_free(struct server *s)
{
	uint32_t fd;

	for (fd = 0; s->conns && fd < s->nslots; fd++) {
		if (!s->conns[fd].buf)
			continue;
		close((int)fd);
		free(s->conns[fd].buf);
		s->st->conns_closed++;
	}
	s->st->conns_active = 0;
	free(s->conns);
	free(s->queue);
	if (s->epfd >= 0)
		close(s->epfd);
}

/*
 * The kernel's epoll busy poll (EPIOCSPARAMS, Linux 6.9): epoll_wait polls
 * the device queues of the sockets it watches for busy_poll_us before it
 * sleeps.  Declared here: Debian 12's kernel headers predate it.  Loopback
 * has no NAPI queue to poll, so there it changes nothing (as io_uring's napi).
 */
struct ec_epoll_params {
	uint32_t busy_poll_usecs;
	uint16_t busy_poll_budget;
	uint8_t prefer_busy_poll;
	uint8_t pad;
};
#define EC_EPIOCSPARAMS _IOW(0x8A, 0x01, struct ec_epoll_params)

static int set_busy_poll(int epfd, uint32_t usecs)
{
	struct ec_epoll_params p = { .busy_poll_usecs = usecs, .busy_poll_budget = 8 };

	if (!usecs)
		return 0;
	if (ioctl(epfd, EC_EPIOCSPARAMS, &p))
		return errno == ENOTTY || errno == EINVAL ? -EOPNOTSUPP : -errno;
	return 0;
}

static int watch(int epfd, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static int server_init(struct server *s, int listen_fd, int stop_fd,
		       const struct ec_server_config *cfg, struct ec_server_stats *st)
{
	struct rlimit rl;
	rlim_t slots;
	int ret;

	memset(s, 0, sizeof(*s));
	s->epfd = -1;
	s->listen_fd = listen_fd;
	s->stop_fd = stop_fd;
	s->buf_size = cfg->buf_size;
	s->budget = cfg->epoll_budget;
	s->spin_ns = (uint64_t)cfg->epoll_spin_us * 1000;
	s->level = cfg->epoll_level != 0;
	s->st = st;
	ret = ec_work_init(&s->work, cfg);
	if (ret)
		return ret;
	/* Try accepting at once: connections may have queued before we started. */
	s->listen_ready = true;

	/*
	 * The table is indexed by fd, so it must cover every fd we can get:
	 * the soft RLIMIT_NOFILE.  max_conns, when set, caps how many of those
	 * slots are in use at once, so it may not exceed them (as for io_uring).
	 */
	if (getrlimit(RLIMIT_NOFILE, &rl))
		return -errno;
	slots = rl.rlim_cur;
	if (cfg->max_conns > slots || cfg->max_conns > MAX_SLOTS)
		return -EMFILE;
	if (slots > MAX_SLOTS)
		slots = MAX_SLOTS;
	if (slots < 1)
		slots = 1;
	s->nslots = (uint32_t)slots;
	s->limit = cfg->max_conns && cfg->max_conns < s->nslots ? cfg->max_conns : s->nslots;

	s->conns = calloc(s->nslots, sizeof(*s->conns));
	s->queue = calloc(s->limit, sizeof(*s->queue));
	if (!s->conns || !s->queue)
		return -ENOMEM;

	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (s->epfd < 0)
		return -errno;
	ret = set_busy_poll(s->epfd, cfg->epoll_busy_poll_us);
	if (ret)
		return ret;
	/* The stop pipe stays level-triggered: it must keep reporting until we leave. */
	ret = watch(s->epfd, stop_fd, EPOLLIN);
	if (ret)
		return ret;
	return watch(s->epfd, listen_fd, EPOLLIN | EPOLLET);
}

int ec_epoll_serve(int listen_fd, int stop_fd, const struct ec_server_config *cfg,
		   struct ec_server_stats *stats)
{
	struct server s;
	int ret, flags;

	if (!cfg || !stats || listen_fd < 0 || stop_fd < 0 || listen_fd == stop_fd)
		return -EINVAL;
	if (cfg->ready_fd == listen_fd || cfg->ready_fd == stop_fd)
		return -EINVAL;
	if (!cfg->buf_size || !cfg->epoll_budget || cfg->epoll_spin_us > EC_MAX_SPIN_US ||
	    cfg->epoll_busy_poll_us > EC_MAX_SPIN_US || cfg->epoll_level > 1)
		return -EINVAL;
	if (cfg->features)	/* the io_uring variants' bits mean nothing here */
		return -EINVAL;
	/* accept4() on a blocking listener would hang the loop and ignore stop_fd. */
	flags = fcntl(listen_fd, F_GETFL);
	if (flags < 0)
		return -errno;
	if (!(flags & O_NONBLOCK))
		return -EINVAL;

	memset(stats, 0, sizeof(*stats));
	ret = server_init(&s, listen_fd, stop_fd, cfg, stats);
	if (!ret) {
		/* Counters read "running" as soon as the waiter hears we are ready. */
		stats->running = 1;
		ret = ec_notify_ready(cfg->ready_fd);
	}
	if (!ret)
		ret = run_loop(&s);
	server_free(&s);
	stats->running = 0;
	return ret;
}
