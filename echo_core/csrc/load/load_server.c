/*
 * load_server.c - the server as seen from the load generator at one instant:
 * a copy of its live counters, the CPU time of its processes and their
 * context switches and minor faults from /proc.  Taken by
 * the timeline thread at the window's edges, so the server's numbers cover
 * exactly the window the client's numbers cover.
 */
#include <dirent.h>
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

/*
 * minflt, utime and stime (fields 10, 14 and 15 of /proc/PID/stat): for the
 * whole process, threads that exited included.
 */
static int proc_stat(int pid, uint64_t *minflt, uint64_t *utime, uint64_t *stime)
{
	char path[64], buf[1024], *p;
	uint64_t v[16];
	int i, ret;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	ret = read_small(path, buf, sizeof(buf));
	if (ret < 0)
		return ret;
	/* The command name may hold spaces and ')': fields start after the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return -EINVAL;
	p += 2;			/* field 3, the state letter */
	p = strchr(p, ' ');
	for (i = 4; i <= 15; i++) {
		if (!p)
			return -EINVAL;
		v[i] = strtoull(p, &p, 10);
	}
	*minflt += v[10];
	*utime += v[14];
	*stime += v[15];
	return 0;
}

/* The value of "key:\t123" in a /proc status text, or 0 when absent. */
static uint64_t status_field(const char *text, const char *key)
{
	const char *p = strstr(text, key);

	return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

/*
 * Context switches summed over the process's live threads: /proc/PID/status
 * shows the leader thread's only.  Threads that exited take theirs with
 * them (the caller drops a window whose sum went down).
 */
static int proc_ctxsw(int pid, uint64_t *vol, uint64_t *invol)
{
	char path[64], buf[4096];
	struct dirent *de;
	DIR *dir;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	dir = opendir(path);
	if (!dir)
		return -errno;
	while ((de = readdir(dir))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.20s/status", pid, de->d_name);
		if (read_small(path, buf, sizeof(buf)) < 0)
			continue;	/* the thread just exited */
		*vol += status_field(buf, "\nvoluntary_ctxt_switches:");
		*invol += status_field(buf, "\nnonvoluntary_ctxt_switches:");
		n++;
	}
	closedir(dir);
	return n ? 0 : -ESRCH;
}

void ec_server_snap(const struct ec_load_config *cfg, struct server_snap *s)
{
	uint64_t ut = 0, st = 0;
	long tick = sysconf(_SC_CLK_TCK);
	uint32_t i;

	memset(s, 0, sizeof(*s));
	if (cfg->server_stats)
		ec_server_stats_sum(cfg->server_stats, cfg->nserver_stats ? cfg->nserver_stats : 1, &s->stats);
	if (!cfg->server_pids || !cfg->nserver_pids)
		return;
	/* CPU clocks first: they are what the window's CPU figures rest on. */
	for (i = 0; i < cfg->nserver_pids; i++) {
		if (process_cpu_ns(cfg->server_pids[i], &s->cpu_ns) ||
		    proc_stat(cfg->server_pids[i], &s->minflt, &ut, &st))
			return;
	}
	s->proc_ok = 1;
	for (i = 0; i < cfg->nserver_pids && s->proc_ok; i++)
		s->proc_ok = !proc_ctxsw(cfg->server_pids[i], &s->vol_ctxsw, &s->invol_ctxsw);
	if (tick <= 0)
		tick = 100;
	s->user_s = (double)ut / (double)tick;
	s->sys_s = (double)st / (double)tick;
	s->ok = 1;
}
