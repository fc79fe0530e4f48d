/*
 * load_server.c - the server as seen from the load generator at one instant:
 * a copy of its live counters and the CPU time of its processes.  Taken by
 * the timeline thread at the window's edges, so the server's numbers cover
 * exactly the window the client's numbers cover.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "load.h"

/* Read a small /proc file into buf (NUL-terminated); returns its length or -errno. */
static int read_small(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	do
		n = read(fd, buf, size - 1);
	while (n < 0 && errno == EINTR);
	err = errno;
	close(fd);
	if (n < 0)
		return -err;
	buf[n] = '\0';
	return (int)n;
}

/*
 * CPU time (ns) of the whole process from its CPU-time clock: unlike a sum
 * over /proc/PID/task/ *, it keeps the time of threads that exited, so a
 * server whose pool threads retire mid-window cannot make it go backwards.
 */
static int process_cpu_ns(int pid, uint64_t *ns)
{
	struct timespec ts;
	clockid_t cid;
	int ret;

	ret = clock_getcpuclockid(pid, &cid);
	if (ret)
		return -ret;
	if (clock_gettime(cid, &ts))
		return -errno;
	*ns += (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
	return 0;
}

/* utime and stime (fields 14 and 15 of /proc/PID/stat) in clock ticks. */
static int proc_times(int pid, uint64_t *utime, uint64_t *stime)
{
	char path[64], buf[1024], *p;
	int i, ret;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	ret = read_small(path, buf, sizeof(buf));
	if (ret < 0)
		return ret;
	/* The command name may hold spaces and ')': fields start after the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p++;
	for (i = 3; i < 14; i++) {
		p = strchr(p + 1, ' ');
		if (!p)
			return -EINVAL;
	}
	*utime += strtoull(p, &p, 10);
	*stime += strtoull(p, NULL, 10);
	return 0;
}

_Static_assert(sizeof(struct ec_server_stats) % sizeof(uint64_t) == 0,
	       "the server's counters are plain uint64_t fields");

/* Copy the counters field by field with relaxed loads: the server writes them as we read. */
static void copy_stats(const struct ec_server_stats *src, struct ec_server_stats *dst)
{
	const uint64_t *s = (const uint64_t *)src;
	uint64_t *d = (uint64_t *)dst;
	size_t i;

	for (i = 0; i < sizeof(*src) / sizeof(uint64_t); i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

void ec_server_snap(const struct ec_load_config *cfg, struct server_snap *s)
{
	uint64_t ut = 0, st = 0;
	long tick = sysconf(_SC_CLK_TCK);
	uint32_t i;

	memset(s, 0, sizeof(*s));
	if (cfg->server_stats)
		copy_stats(cfg->server_stats, &s->stats);
	if (!cfg->server_pids || !cfg->nserver_pids)
		return;
	for (i = 0; i < cfg->nserver_pids; i++) {
		if (process_cpu_ns(cfg->server_pids[i], &s->cpu_ns) ||
		    proc_times(cfg->server_pids[i], &ut, &st))
			return;
	}
	if (tick <= 0)
		tick = 100;
	s->user_s = (double)ut / (double)tick;
	s->sys_s = (double)st / (double)tick;
	s->ok = 1;
}
