/*
 * load_counters.c - kernel counters (perf events) on the server's threads.
 *
 * Python resolves which events exist (tracepoint ids from tracefs, the PMU's
 * generic events) and hands them in as cfg->counters.  Each is opened in
 * counting mode once per existing thread of every server pid, before the
 * connections start, with inherit=1 so that threads those create later
 * (io_uring's io-wq workers) count too; the timeline thread reads them at
 * the window's two edges together with the server's other snapshots.
 *
 * An event that cannot be opened on every thread (no permission, missing
 * tracepoint, no PMU) is dropped with its -errno: a count over only some
 * threads would be wrong without looking wrong.  Nothing here fails a run.
 *
 * ec_counters_hold keeps the tracepoints registered between runs, so that
 * closing a run's events does not wait for a grace period per tracepoint.
 */
#include <dirent.h>
#include <errno.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "load.h"

static int perf_open_attr(const struct ec_counter *ev, int tid, int inherit, int disabled)
{
	struct perf_event_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = ev->type;
	attr.config = ev->config;
	attr.inherit = inherit;
	attr.disabled = disabled;
	/* The hypervisor's share is not the server's (and a guest may not count it anyway). */
	attr.exclude_hv = 1;
	fd = (int)syscall(SYS_perf_event_open, &attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int perf_open(const struct ec_counter *ev, int tid)
{
	return perf_open_attr(ev, tid, 1, 0);
}

static int add_fd(struct counters *c, int fd, uint32_t event)
{
	struct counter_fd *p;

	if (c->nfds == c->cap) {
		uint32_t cap = c->cap ? 2 * c->cap : 64;

		p = realloc(c->fds, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		c->fds = p;
		c->cap = cap;
	}
	c->fds[c->nfds].fd = fd;
	c->fds[c->nfds].event = event;
	c->nfds++;
	return 0;
}

/* Close the fds of event e opened since index `from` (the event failed on a later thread). */
static void drop_event(struct counters *c, uint32_t from)
{
	while (c->nfds > from)
		close(c->fds[--c->nfds].fd);
}

/* Open event e on every thread of pid.  Returns 0 or -errno (the caller drops the event). */
static int open_on_pid(struct counters *c, const struct ec_counter *ev, uint32_t e, int pid)
{
	char path[64];
	struct dirent *de;
	DIR *dir;
	int fd, ret = 0, n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while (!ret && (de = readdir(dir))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		fd = perf_open(ev, atoi(de->d_name));
		if (fd == -ESRCH)
			continue;	/* that thread just exited */
		if (fd < 0) {
			ret = fd;
			break;
		}
		ret = add_fd(c, fd, e);
		if (ret)
			close(fd);
		n++;
	}
	closedir(dir);
	return ret ? ret : n ? 0 : -ESRCH;
}

/*
 * Open every configured event on every server thread.  Per-event failures
 * go into c->status; returns -ENOMEM only if bookkeeping itself failed.
 */
int ec_counters_open(struct counters *c, const struct ec_load_config *cfg)
{
	uint32_t e, i, from;
	int ret;

	memset(c, 0, sizeof(*c));
	c->n = cfg->ncounters;
	for (e = 0; e < c->n; e++) {
		from = c->nfds;
		ret = cfg->nserver_pids ? 0 : -ESRCH;
		for (i = 0; i < cfg->nserver_pids && !ret; i++)
			ret = open_on_pid(c, &cfg->counters[e], e, cfg->server_pids[i]);
		if (ret == -ENOMEM)
			return ret;
		if (ret) {
			drop_event(c, from);
			c->status[e] = ret;
		}
	}
	return 0;
}

/* Sum each event over its threads now; status[e] is the open status or the first read error. */
void ec_counters_read(const struct counters *c, uint64_t *vals, int *status)
{
	uint64_t v;
	ssize_t n;
	uint32_t i;

	for (i = 0; i < c->n; i++) {
		vals[i] = 0;
		status[i] = c->status[i];
	}
	for (i = 0; i < c->nfds; i++) {
		const struct counter_fd *f = &c->fds[i];

		n = read(f->fd, &v, sizeof(v));
		if (n == (ssize_t)sizeof(v))
			vals[f->event] += v;
		else if (!status[f->event])
			status[f->event] = n < 0 ? -errno : -EIO;
	}
}

void ec_counters_close(struct counters *c)
{
	drop_event(c, 0);
	free(c->fds);
	c->fds = NULL;
	c->cap = 0;
}

/* The tracepoints this process holds (ec_counters_hold) and their fds, until ec_counters_release. */
static uint64_t held[EC_MAX_COUNTERS];
static int held_fd[EC_MAX_COUNTERS];
static uint32_t nheld;

int ec_counters_hold(const struct ec_counter *events, uint32_t n)
{
	uint32_t i, j;
	int fd;

	for (i = 0; i < n; i++) {
		if (events[i].type != PERF_TYPE_TRACEPOINT)
			continue;	/* only tracepoints pay a grace period on close */
		for (j = 0; j < nheld && held[j] != events[i].config; j++)
			;
		if (j < nheld)
			continue;
		if (nheld == EC_MAX_COUNTERS)
			return -ENOSPC;
		fd = perf_open_attr(&events[i], 0, 0, 1);
		if (fd < 0)
			return fd;
		held[nheld] = events[i].config;
		held_fd[nheld++] = fd;
	}
	return (int)nheld;
}

void ec_counters_release(void)
{
	while (nheld)
		close(held_fd[--nheld]);
}
