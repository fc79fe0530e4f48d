/*
 * uring_compat.h - what Debian 12's liburing 2.3 headers lack, from the
 * kernel's uapi (include/uapi/linux/io_uring.h) and liburing's man pages.
 * Everything sits behind #ifndef, so newer headers win.
 */
#ifndef ECHO_CORE_URING_COMPAT_H
#define ECHO_CORE_URING_COMPAT_H

#include <liburing.h>
#include <stdint.h>

/* sqe->ioprio for send/recv: one completion spanning several provided buffers (6.10). */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
/* cqe->flags: the provided buffer was consumed only in part and stays in the ring (6.12). */
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
/*
 * io_uring_buf_reg's flags field was called `pad` in headers older than
 * kernel 6.4's (liburing 2.3's); liburing 2.4 brought both the rename and
 * IO_URING_VERSION_MAJOR/MINOR.
 */
#if defined(IO_URING_VERSION_MAJOR) && (IO_URING_VERSION_MAJOR > 2 || IO_URING_VERSION_MINOR >= 4)
#define EC_BUF_REG_FLAGS(reg) ((reg).flags)
#else
#define EC_BUF_REG_FLAGS(reg) ((reg).pad)
#endif
/* io_uring_buf_reg.flags: consume ring buffers incrementally (6.12). */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
/* io_uring_params.features bits (6.10, 6.12). */
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
/* io_uring_register(2) opcode for NAPI busy poll (6.9); the enum in 2.3 stops at 25. */
#define EC_IORING_REGISTER_NAPI 27

/* struct io_uring_napi (16 bytes; 6.9 had pad[3] + u64 resv in the same place as opcode..resv). */
struct ec_uring_napi {
	uint32_t busy_poll_to;	/* µs */
	uint8_t prefer_busy_poll;
	uint8_t opcode;		/* 0: register, dynamic NAPI id tracking */
	uint8_t pad[2];
	uint32_t op_param;
	uint32_t resv;
};

/*
 * struct io_uring_getevents_arg as of 6.12: the 2.3 header's `pad` is the
 * kernel's min_wait_usec (honoured where IORING_FEAT_MIN_TIMEOUT is set).
 */
struct ec_getevents_arg {
	uint64_t sigmask;
	uint32_t sigmask_sz;
	uint32_t min_wait_usec;
	uint64_t ts;
};

#endif
