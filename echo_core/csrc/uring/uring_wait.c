/*
 * uring_wait.c - the batched wait unit (EC_FEAT_BATCH).
 *
 * Instead of returning from io_uring_enter on the first completion, ask for
 * batch_nr of them.  Where the kernel has IORING_FEAT_MIN_TIMEOUT (6.12),
 * min_wait_usec = batch_wait_us: the wait lingers at most that long for
 * batch_nr completions, then returns with whatever is there (or keeps
 * waiting, with no timeout, for the first one).  Elsewhere: wait_nr =
 * batch_nr with a batch_wait_us timeout (-ETIME when nothing came; the loop
 * just waits again).  Either way a lone completion is handled at most
 * batch_wait_us after it arrived.  liburing 2.3 cannot pass min_wait_usec,
 * so this unit flushes the SQ and enters itself.
 *
 * With batch_after, the wait lingers only after a wake-up that found at
 * least that many completions (they come fast: company is likely); after a
 * quieter one it waits for the first completion with no timer.  Profiles
 * (issue 18) put batch's cost in arming the timers on every wait, which on
 * a KVM guest programs a trapped timer, whether or not company came.
 */
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uring_types.h"
#include "uring_wait.h"

#define IDLE_WAIT_S 1	/* min-wait mode: an idle server wakes up this often */

/* Publish the SQEs queued since the last flush; returns how many the kernel has yet to consume. */
static unsigned flush_sq(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;
	unsigned tail = sq->sqe_tail;
	unsigned i;

	if (sq->sqe_head != tail) {
		/*
		 * Slot i of the SQ array names SQE i (liburing maps them 1:1; say so
		 * anyway).  liburing >= 2.5 sets rings up with IORING_SETUP_NO_SQARRAY
		 * where the kernel has it (6.6): there is no array, sq->array is NULL.
		 */
		if (sq->array) {
			for (i = sq->sqe_head; i != tail; i++)
				sq->array[i & sq->ring_mask] = i & sq->ring_mask;
		}
		sq->sqe_head = tail;
		io_uring_smp_store_release(sq->ktail, tail);
	}
	return tail - io_uring_smp_load_acquire(sq->khead);
}

int batch_wait(struct server *s, int block)
{
	struct io_uring *ring = &s->ring;
	struct __kernel_timespec ts;
	struct ec_getevents_arg arg;
	unsigned submit, flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
	long ret;

	if (!block)
		return io_uring_submit_and_wait(ring, 0);
	if (s->batch_after && s->last_reaped < s->batch_after)
		return io_uring_submit_and_wait(ring, 1);
	submit = flush_sq(ring);
	arg.sigmask = 0;
	arg.sigmask_sz = _NSIG / 8;
	if (s->min_timeout) {
		/* The kernel applies min_wait only together with a timeout: a long one. */
		ts.tv_sec = IDLE_WAIT_S;
		ts.tv_nsec = 0;
		arg.min_wait_usec = s->batch_wait_us;
		arg.ts = (uint64_t)(uintptr_t)&ts;
	} else {
		ts.tv_sec = s->batch_wait_us / 1000000;
		ts.tv_nsec = (long long)(s->batch_wait_us % 1000000) * 1000;
		arg.min_wait_usec = 0;
		arg.ts = (uint64_t)(uintptr_t)&ts;
	}
	if (ring->flags & IORING_SETUP_SQPOLL) {
		if (io_uring_smp_load_acquire(ring->sq.kflags) & IORING_SQ_NEED_WAKEUP)
			flags |= IORING_ENTER_SQ_WAKEUP;
		submit = 0;	/* the SQ thread submits */
	}
	ret = syscall(__NR_io_uring_enter, ring->ring_fd, submit, s->batch_nr, flags, &arg, sizeof(arg));
	return ret < 0 ? -errno : (int)ret;
}
