/* probe.c - what this kernel's io_uring accepts, asked through liburing. */
#include <errno.h>
#include <liburing.h>
#include <string.h>

#include "echo_core.h"

/* Set up (and tear down) a small ring with these flags. Returns 0 or -errno. */
static int try_setup(unsigned flags, struct io_uring_params *p)
{
	struct io_uring ring;
	int ret;

	memset(p, 0, sizeof(*p));
	p->flags = flags;
	ret = io_uring_queue_init_params(4, &ring, p);
	if (ret)
		return ret;
	io_uring_queue_exit(&ring);
	return 0;
}

int ec_uring_probe(struct ec_uring_probe *out)
{
	struct io_uring_params p;
	struct io_uring_probe *probe;
	struct io_uring ring;
	int op, ret;

	memset(out, 0, sizeof(*out));
	memset(&p, 0, sizeof(p));
	ret = io_uring_queue_init_params(4, &ring, &p);
	out->setup_error = ret;
	if (ret)
		return 0;
	out->features = p.features;
	probe = io_uring_get_probe_ring(&ring);
	if (probe) {
		out->ops_len = probe->ops_len;
		for (op = 0; op < probe->ops_len && op < EC_PROBE_MAX_OPS; op++)
			out->op_supported[op] = io_uring_opcode_supported(probe, op);
		io_uring_free_probe(probe);
	}
	io_uring_queue_exit(&ring);
	out->coop_taskrun = try_setup(IORING_SETUP_COOP_TASKRUN, &p);
	out->single_issuer = try_setup(IORING_SETUP_SINGLE_ISSUER, &p);
	out->defer_taskrun = try_setup(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, &p);
	return 0;
}
