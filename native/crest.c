// crest_native: the thin system-call layer behind src/sys/native.ts.
//
// Every export checks its arguments, makes one system call (or a fixed, tiny
// sequence) on the calling thread, and returns data or throws. Failing system
// calls throw an instance of the JS class handed to setErrorClass()
// (SyscallError: syscall, op, errno, pid); bad arguments throw TypeError
// "crest_native.<fn>: argument <n> (<name>) must be <what>". No policy, no
// loops over processes, no retries except EINTR in waitpid. Nothing here uses
// the libuv thread pool: ptrace requests must come from the attaching thread.
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifdef CREST_HAVE_ZSTD
#include <zstd.h>
#endif
#include <linux/capability.h>
#include <linux/userfaultfd.h>

// ---------------------------------------------------------------------------
// Kernel ABI pieces that the installed headers may lack. Own names, fixed
// layouts, checked sizes.

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
#ifndef PTRACE_PEEKSIGINFO_SHARED
#define PTRACE_PEEKSIGINFO_SHARED 1
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

// struct ptrace_rseq_configuration (linux/ptrace.h, 5.13+)
struct crest_rseq_config {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size;
  uint32_t signature;
  uint32_t flags;
  uint32_t pad;
};
_Static_assert(sizeof(struct crest_rseq_config) == 24, "rseq config layout");

// struct ptrace_peeksiginfo_args (linux/ptrace.h)
struct crest_peeksiginfo_args {
  uint64_t off;
  uint32_t flags;
  int32_t nr;
};
_Static_assert(sizeof(struct crest_peeksiginfo_args) == 16, "peeksiginfo layout");

// PAGEMAP_SCAN (linux/fs.h, 6.7+); Debian 12's headers predate it.
struct crest_page_region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};
struct crest_pm_scan_arg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
_Static_assert(sizeof(struct crest_pm_scan_arg) == 96, "pm_scan_arg layout");
#define CREST_PAGEMAP_SCAN _IOWR('f', 16, struct crest_pm_scan_arg)
#define CREST_PAGE_IS_PRESENT (1ULL << 3)

#define NREGS 27
_Static_assert(sizeof(struct user_regs_struct) == NREGS * 8, "user_regs_struct is 27 x u64");
_Static_assert(sizeof(siginfo_t) == 128, "siginfo_t is 128 bytes");

#define SIGINFO_SIZE 128
#define REGSET_MAX (1 << 20)
#define PEEK_BATCH 32
#define MAX_SAFE_INT 9007199254740991LL  // 2^53 - 1: every address fits
#define SIG_MAX (_NSIG - 1)

// ---------------------------------------------------------------------------
// Per-environment state: the SyscallError class (napi_refs are per env, so a
// static would break in worker threads).

typedef struct {
  napi_ref error_class;
#ifdef CREST_HAVE_ZSTD
  // Reused contexts: allocating one per block costs more than compressing it.
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
#endif
} crest_state;

static void state_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  crest_state *st = data;
  if (st->error_class) napi_delete_reference(env, st->error_class);
#ifdef CREST_HAVE_ZSTD
  if (st->cctx) ZSTD_freeCCtx(st->cctx);
  if (st->dctx) ZSTD_freeDCtx(st->dctx);
#endif
  free(st);
}

static crest_state *get_state(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) != napi_ok) return NULL;
  return data;
}

// ---------------------------------------------------------------------------
// Throwing.

// A N-API call failed: make sure something is thrown, return NULL.
static napi_value napi_failed(napi_env env, const char *call) {
  const napi_extended_error_info *ei = NULL;
  char msg[256];
  napi_get_last_error_info(env, &ei);
  snprintf(msg, sizeof msg, "crest_native: %s failed: %s", call,
           ei && ei->error_message ? ei->error_message : "unknown N-API error");
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, "CREST_NAPI", msg);
  return NULL;
}

#define CHECK(call)                                   \
  do {                                                \
    if ((call) != napi_ok) return napi_failed(env, #call); \
  } while (0)

// Throws SyscallError(syscall, op, err, pid), or a plain Error when the class
// was not handed over yet. `err` must be captured right after the failing call.
static napi_value throw_sys(napi_env env, const char *syscall_name, const char *op, int err,
                            int64_t pid) {
  if (pid < 0) pid = 0;
  crest_state *st = get_state(env);
  napi_value ctor = NULL;
  if (st && st->error_class) napi_get_reference_value(env, st->error_class, &ctor);

  napi_value argv[4];
  if (napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &argv[0]) != napi_ok ||
      napi_create_string_utf8(env, op, NAPI_AUTO_LENGTH, &argv[1]) != napi_ok ||
      napi_create_int32(env, err, &argv[2]) != napi_ok ||
      napi_create_int64(env, pid, &argv[3]) != napi_ok)
    return napi_failed(env, "throw_sys");

  if (ctor) {
    napi_value inst;
    if (napi_new_instance(env, ctor, 4, argv, &inst) != napi_ok)
      return napi_failed(env, "napi_new_instance(SyscallError)");
    napi_throw(env, inst);
    return NULL;
  }

  char msg[512];
  if (pid > 0)
    snprintf(msg, sizeof msg, "%s (%s) failed for pid %lld: %s", syscall_name, op, (long long)pid,
             strerror(err));
  else
    snprintf(msg, sizeof msg, "%s (%s) failed: %s", syscall_name, op, strerror(err));
  napi_value message, error;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, NULL, message, &error) != napi_ok)
    return napi_failed(env, "throw_sys");
  napi_set_named_property(env, error, "syscall", argv[0]);
  napi_set_named_property(env, error, "op", argv[1]);
  napi_set_named_property(env, error, "errno", argv[2]);
  napi_set_named_property(env, error, "pid", argv[3]);
  napi_throw(env, error);
  return NULL;
}

static bool type_error(napi_env env, const char *fn, int n, const char *name, const char *what) {
  char msg[256];
  snprintf(msg, sizeof msg, "crest_native.%s: argument %d (%s) must be %s", fn, n, name, what);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

// ---------------------------------------------------------------------------
// Argument checks. `n` is 1-based, as in the messages.

static bool arg_int(napi_env env, const char *fn, napi_value v, int n, const char *name,
                    int64_t min, int64_t max, int64_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_number &&
      napi_get_value_double(env, v, &d) == napi_ok && d >= (double)min && d <= (double)max &&
      (double)(int64_t)d == d && napi_get_value_int64(env, v, out) == napi_ok)
    return true;
  char what[96];
  snprintf(what, sizeof what, "an integer in [%lld, %lld]", (long long)min, (long long)max);
  return type_error(env, fn, n, name, what);
}

static bool arg_bool(napi_env env, const char *fn, napi_value v, int n, const char *name,
                     bool *out) {
  if (napi_get_value_bool(env, v, out) == napi_ok) return true;
  return type_error(env, fn, n, name, "a boolean");
}

static bool arg_u64(napi_env env, const char *fn, napi_value v, int n, const char *name,
                    uint64_t *out) {
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) == napi_ok && lossless) return true;
  return type_error(env, fn, n, name, "a BigInt in [0n, 2n ** 64n)");
}

static bool arg_buffer(napi_env env, const char *fn, napi_value v, int n, const char *name,
                       void **data, size_t *len) {
  bool is = false;
  if (napi_is_buffer(env, v, &is) == napi_ok && is &&
      napi_get_buffer_info(env, v, data, len) == napi_ok)
    return true;
  return type_error(env, fn, n, name, "a Buffer");
}

// A string without NUL bytes, as a malloc'd C string the caller frees.
static bool arg_cstring(napi_env env, const char *fn, napi_value v, int n, const char *name,
                        char **out) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) == napi_ok) {
    char *s = malloc(len + 1);
    if (!s) {
      napi_throw_error(env, "CREST_NOMEM", "crest_native: out of memory");
      return false;
    }
    size_t got = 0;
    if (napi_get_value_string_utf8(env, v, s, len + 1, &got) == napi_ok && got == len &&
        strlen(s) == len) {
      *out = s;
      return true;
    }
    free(s);
  }
  return type_error(env, fn, n, name, "a string without NUL characters");
}

#define ARGS(N)                                                     \
  napi_value argv[N];                                               \
  size_t argc = N;                                                  \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

#define INT_ARG(i, name, min, max, var)                                   \
  int64_t var;                                                            \
  if (!arg_int(env, FN, argv[i], (i) + 1, name, min, max, &var)) return NULL

#define PID_ARG(i, name, var) INT_ARG(i, name, 1, INT32_MAX, var)
#define SIG_ARG(i, var) INT_ARG(i, "sig", 0, SIG_MAX, var)
#define U32_ARG(i, name, var) INT_ARG(i, name, 0, UINT32_MAX, var)

// ---------------------------------------------------------------------------
// Value helpers.

static napi_value make_bigint(napi_env env, uint64_t v) {
  napi_value r;
  CHECK(napi_create_bigint_uint64(env, v, &r));
  return r;
}

static napi_value make_int(napi_env env, int64_t v) {
  napi_value r;
  CHECK(napi_create_int64(env, v, &r));
  return r;
}

static bool set_prop(napi_env env, napi_value obj, const char *key, napi_value v) {
  return v != NULL && napi_set_named_property(env, obj, key, v) == napi_ok;
}

#define PTR(x) ((void *)(uintptr_t)(x))

// ---------------------------------------------------------------------------
// setErrorClass

static napi_value js_setErrorClass(napi_env env, napi_callback_info info) {
  static const char FN[] = "setErrorClass";
  ARGS(1);
  napi_valuetype t;
  CHECK(napi_typeof(env, argv[0], &t));
  if (t != napi_function) {
    type_error(env, FN, 1, "ctor", "a function (the SyscallError class)");
    return NULL;
  }
  crest_state *st = get_state(env);
  if (!st) {
    napi_throw_error(env, "CREST_NAPI", "crest_native: instance data missing");
    return NULL;
  }
  napi_ref ref;
  CHECK(napi_create_reference(env, argv[0], 1, &ref));
  if (st->error_class) napi_delete_reference(env, st->error_class);
  st->error_class = ref;
  return NULL;
}

// ---------------------------------------------------------------------------
// ptrace

static napi_value js_ptraceSeize(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceSeize";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  U32_ARG(1, "options", options);
  if (ptrace(PTRACE_SEIZE, (pid_t)pid, NULL, PTR(options)) == -1)
    return throw_sys(env, "ptrace", "PTRACE_SEIZE", errno, pid);
  return NULL;
}

static napi_value js_ptraceInterrupt(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceInterrupt";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  if (ptrace(PTRACE_INTERRUPT, (pid_t)pid, NULL, NULL) == -1)
    return throw_sys(env, "ptrace", "PTRACE_INTERRUPT", errno, pid);
  return NULL;
}

// The three resume-style requests: (pid, sig).
static napi_value ptrace_with_sig(napi_env env, napi_callback_info info, const char *FN,
                                  enum __ptrace_request req, const char *op) {
  ARGS(2);
  PID_ARG(0, "pid", pid);
  SIG_ARG(1, sig);
  if (ptrace(req, (pid_t)pid, NULL, PTR(sig)) == -1) return throw_sys(env, "ptrace", op, errno, pid);
  return NULL;
}

static napi_value js_ptraceDetach(napi_env env, napi_callback_info info) {
  return ptrace_with_sig(env, info, "ptraceDetach", PTRACE_DETACH, "PTRACE_DETACH");
}

static napi_value js_ptraceCont(napi_env env, napi_callback_info info) {
  return ptrace_with_sig(env, info, "ptraceCont", PTRACE_CONT, "PTRACE_CONT");
}

static napi_value js_ptraceSyscall(napi_env env, napi_callback_info info) {
  return ptrace_with_sig(env, info, "ptraceSyscall", PTRACE_SYSCALL, "PTRACE_SYSCALL");
}

static napi_value js_ptraceSingleStep(napi_env env, napi_callback_info info) {
  return ptrace_with_sig(env, info, "ptraceSingleStep", PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP");
}

static napi_value js_ptraceSetOptions(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceSetOptions";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  U32_ARG(1, "options", options);
  if (ptrace(PTRACE_SETOPTIONS, (pid_t)pid, NULL, PTR(options)) == -1)
    return throw_sys(env, "ptrace", "PTRACE_SETOPTIONS", errno, pid);
  return NULL;
}

static napi_value js_ptraceGetRegs(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetRegs";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  struct user_regs_struct regs;
  struct iovec iov = {.iov_base = &regs, .iov_len = sizeof regs};
  if (ptrace(PTRACE_GETREGSET, (pid_t)pid, PTR(NT_PRSTATUS), &iov) == -1)
    return throw_sys(env, "ptrace", "PTRACE_GETREGSET NT_PRSTATUS", errno, pid);
  if (iov.iov_len != sizeof regs) {
    // A 32-bit (compat) tracee: NT_PRSTATUS is the i386 layout, not 27 x u64.
    char msg[160];
    snprintf(msg, sizeof msg,
             "ptrace (PTRACE_GETREGSET NT_PRSTATUS) for pid %lld returned %zu bytes, expected %zu "
             "(32-bit tracee?)",
             (long long)pid, iov.iov_len, sizeof regs);
    napi_throw_error(env, "CREST_REGSET_SIZE", msg);
    return NULL;
  }
  void *data;
  napi_value ab, arr;
  CHECK(napi_create_arraybuffer(env, sizeof regs, &data, &ab));
  memcpy(data, &regs, sizeof regs);
  CHECK(napi_create_typedarray(env, napi_biguint64_array, NREGS, ab, 0, &arr));
  return arr;
}

static napi_value js_ptraceSetRegs(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceSetRegs";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  bool is = false;
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_is_typedarray(env, argv[1], &is) != napi_ok || !is ||
      napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_biguint64_array || length != NREGS || data == NULL) {
    type_error(env, FN, 2, "regs", "a BigUint64Array of length 27");
    return NULL;
  }
  struct user_regs_struct regs;
  memcpy(&regs, data, sizeof regs);
  struct iovec iov = {.iov_base = &regs, .iov_len = sizeof regs};
  if (ptrace(PTRACE_SETREGSET, (pid_t)pid, PTR(NT_PRSTATUS), &iov) == -1)
    return throw_sys(env, "ptrace", "PTRACE_SETREGSET NT_PRSTATUS", errno, pid);
  return NULL;
}

static napi_value js_ptraceGetRegset(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetRegset";
  ARGS(3);
  PID_ARG(0, "pid", pid);
  U32_ARG(1, "noteType", note);
  INT_ARG(2, "maxSize", 1, MAX_SAFE_INT, max_size);
  if (max_size > REGSET_MAX) max_size = REGSET_MAX;
  void *buf = calloc(1, (size_t)max_size);
  if (!buf) return throw_sys(env, "ptrace", "PTRACE_GETREGSET (buffer)", ENOMEM, pid);
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)max_size};
  if (ptrace(PTRACE_GETREGSET, (pid_t)pid, PTR(note), &iov) == -1) {
    int err = errno;
    free(buf);
    char op[64];
    snprintf(op, sizeof op, "PTRACE_GETREGSET 0x%llx", (unsigned long long)note);
    return throw_sys(env, "ptrace", op, err, pid);
  }
  napi_value result;
  napi_status s = napi_create_buffer_copy(env, iov.iov_len, buf, NULL, &result);
  free(buf);
  CHECK(s);
  return result;
}

static napi_value js_ptraceSetRegset(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceSetRegset";
  ARGS(3);
  PID_ARG(0, "pid", pid);
  U32_ARG(1, "noteType", note);
  void *data;
  size_t len;
  if (!arg_buffer(env, FN, argv[2], 3, "data", &data, &len)) return NULL;
  struct iovec iov = {.iov_base = data, .iov_len = len};
  if (ptrace(PTRACE_SETREGSET, (pid_t)pid, PTR(note), &iov) == -1) {
    int err = errno;
    char op[64];
    snprintf(op, sizeof op, "PTRACE_SETREGSET 0x%llx", (unsigned long long)note);
    return throw_sys(env, "ptrace", op, err, pid);
  }
  return NULL;
}

static napi_value js_ptraceGetSigmask(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetSigmask";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  uint64_t mask = 0;
  if (ptrace(PTRACE_GETSIGMASK, (pid_t)pid, PTR(sizeof mask), &mask) == -1)
    return throw_sys(env, "ptrace", "PTRACE_GETSIGMASK", errno, pid);
  return make_bigint(env, mask);
}

static napi_value js_ptraceSetSigmask(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceSetSigmask";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  uint64_t mask;
  if (!arg_u64(env, FN, argv[1], 2, "mask", &mask)) return NULL;
  if (ptrace(PTRACE_SETSIGMASK, (pid_t)pid, PTR(sizeof mask), &mask) == -1)
    return throw_sys(env, "ptrace", "PTRACE_SETSIGMASK", errno, pid);
  return NULL;
}

static napi_value js_ptracePeekSiginfo(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptracePeekSiginfo";
  ARGS(3);
  PID_ARG(0, "pid", pid);
  bool shared;
  if (!arg_bool(env, FN, argv[1], 2, "shared", &shared)) return NULL;
  INT_ARG(2, "max", 0, INT32_MAX, max);

  napi_value result;
  CHECK(napi_create_array(env, &result));
  siginfo_t batch[PEEK_BATCH];
  uint32_t count = 0;
  // One operation: read the queue in batches until it runs short or `max` is reached.
  while (count < (uint64_t)max) {
    int64_t want = (int64_t)max - count;
    if (want > PEEK_BATCH) want = PEEK_BATCH;
    struct crest_peeksiginfo_args args = {
        .off = count,
        .flags = shared ? PTRACE_PEEKSIGINFO_SHARED : 0,
        .nr = (int32_t)want,
    };
    long got = ptrace(PTRACE_PEEKSIGINFO, (pid_t)pid, &args, batch);
    if (got == -1)
      return throw_sys(env, "ptrace", shared ? "PTRACE_PEEKSIGINFO shared" : "PTRACE_PEEKSIGINFO",
                       errno, pid);
    for (long i = 0; i < got; i++) {
      napi_value b;
      CHECK(napi_create_buffer_copy(env, SIGINFO_SIZE, &batch[i], NULL, &b));
      CHECK(napi_set_element(env, result, count + (uint32_t)i, b));
    }
    count += (uint32_t)got;
    if (got < want) break;
  }
  return result;
}

static napi_value js_ptraceGetSiginfo(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetSiginfo";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  siginfo_t si;
  memset(&si, 0, sizeof si);
  if (ptrace(PTRACE_GETSIGINFO, (pid_t)pid, NULL, &si) == -1)
    return throw_sys(env, "ptrace", "PTRACE_GETSIGINFO", errno, pid);
  napi_value b;
  CHECK(napi_create_buffer_copy(env, SIGINFO_SIZE, &si, NULL, &b));
  return b;
}

static napi_value js_ptraceGetEventMsg(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetEventMsg";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  unsigned long msg = 0;
  if (ptrace(PTRACE_GETEVENTMSG, (pid_t)pid, NULL, &msg) == -1)
    return throw_sys(env, "ptrace", "PTRACE_GETEVENTMSG", errno, pid);
  return make_bigint(env, msg);
}

static napi_value js_ptraceGetRseqConfig(napi_env env, napi_callback_info info) {
  static const char FN[] = "ptraceGetRseqConfig";
  ARGS(1);
  PID_ARG(0, "pid", pid);
  struct crest_rseq_config conf;
  memset(&conf, 0, sizeof conf);
  if (ptrace((enum __ptrace_request)PTRACE_GET_RSEQ_CONFIGURATION, (pid_t)pid, PTR(sizeof conf),
             &conf) == -1)
    return throw_sys(env, "ptrace", "PTRACE_GET_RSEQ_CONFIGURATION", errno, pid);
  napi_value result;
  if (conf.rseq_abi_pointer == 0) {
    CHECK(napi_get_null(env, &result));
    return result;
  }
  napi_value size, flags, sig;
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_uint32(env, conf.rseq_abi_size, &size));
  CHECK(napi_create_uint32(env, conf.flags, &flags));
  CHECK(napi_create_uint32(env, conf.signature, &sig));
  if (!set_prop(env, result, "rseqAbiPointer", make_bigint(env, conf.rseq_abi_pointer)) ||
      !set_prop(env, result, "rseqAbiSize", size) || !set_prop(env, result, "flags", flags) ||
      !set_prop(env, result, "signature", sig))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

// ---------------------------------------------------------------------------
// waitpid

static napi_value js_waitpid(napi_env env, napi_callback_info info) {
  static const char FN[] = "waitpid";
  ARGS(2);
  INT_ARG(0, "pid", -INT32_MAX, INT32_MAX, pid);
  U32_ARG(1, "flags", flags);
  int status = 0;
  pid_t got;
  do got = waitpid((pid_t)pid, &status, (int)(uint32_t)flags);
  while (got == -1 && errno == EINTR);
  if (got == -1) return throw_sys(env, "waitpid", "", errno, pid);
  napi_value result;
  CHECK(napi_create_object(env, &result));
  if (!set_prop(env, result, "pid", make_int(env, got)) ||
      !set_prop(env, result, "status", make_int(env, status)))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

// ---------------------------------------------------------------------------
// process_vm_readv / process_vm_writev

static napi_value process_vm(napi_env env, napi_callback_info info, const char *FN, bool write) {
  ARGS(5);
  PID_ARG(0, "pid", pid);
  INT_ARG(1, "addr", 0, MAX_SAFE_INT, addr);
  void *data;
  size_t buflen;
  if (!arg_buffer(env, FN, argv[2], 3, "buf", &data, &buflen)) return NULL;
  INT_ARG(3, "off", 0, (int64_t)buflen, off);
  INT_ARG(4, "len", 0, (int64_t)buflen - off, len);
  struct iovec local = {.iov_base = data ? (char *)data + off : NULL, .iov_len = (size_t)len};
  struct iovec remote = {.iov_base = PTR(addr), .iov_len = (size_t)len};
  ssize_t n = write ? process_vm_writev((pid_t)pid, &local, 1, &remote, 1, 0)
                    : process_vm_readv((pid_t)pid, &local, 1, &remote, 1, 0);
  if (n == -1) {
    int err = errno;
    char op[64];
    snprintf(op, sizeof op, "0x%llx+%lld", (unsigned long long)addr, (long long)len);
    return throw_sys(env, write ? "process_vm_writev" : "process_vm_readv", op, err, pid);
  }
  return make_int(env, n);
}

static napi_value js_processVmReadv(napi_env env, napi_callback_info info) {
  return process_vm(env, info, "processVmReadv", false);
}

static napi_value js_processVmWritev(napi_env env, napi_callback_info info) {
  return process_vm(env, info, "processVmWritev", true);
}

// ---------------------------------------------------------------------------
// Signals

static napi_value js_kill(napi_env env, napi_callback_info info) {
  static const char FN[] = "kill";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  SIG_ARG(1, sig);
  if (kill((pid_t)pid, (int)sig) == -1) {
    int err = errno;
    char op[16];
    snprintf(op, sizeof op, "sig %lld", (long long)sig);
    return throw_sys(env, "kill", op, err, pid);
  }
  return NULL;
}

static napi_value js_tgkill(napi_env env, napi_callback_info info) {
  static const char FN[] = "tgkill";
  ARGS(3);
  PID_ARG(0, "tgid", tgid);
  PID_ARG(1, "tid", tid);
  SIG_ARG(2, sig);
  if (syscall(SYS_tgkill, (pid_t)tgid, (pid_t)tid, (int)sig) == -1) {
    int err = errno;
    char op[16];
    snprintf(op, sizeof op, "sig %lld", (long long)sig);
    return throw_sys(env, "tgkill", op, err, tid);
  }
  return NULL;
}

// ---------------------------------------------------------------------------
// Process facts

static napi_value js_kcmp(napi_env env, napi_callback_info info) {
  static const char FN[] = "kcmp";
  ARGS(5);
  PID_ARG(0, "pid1", pid1);
  PID_ARG(1, "pid2", pid2);
  INT_ARG(2, "type", 0, INT32_MAX, type);
  INT_ARG(3, "idx1", 0, MAX_SAFE_INT, idx1);
  INT_ARG(4, "idx2", 0, MAX_SAFE_INT, idx2);
  long r = syscall(SYS_kcmp, (pid_t)pid1, (pid_t)pid2, (int)type, (unsigned long)idx1,
                   (unsigned long)idx2);
  if (r == -1) {
    int err = errno;
    char op[32];
    snprintf(op, sizeof op, "type %lld", (long long)type);
    return throw_sys(env, "kcmp", op, err, pid1);
  }
  return make_int(env, r);
}

static napi_value js_getRobustList(napi_env env, napi_callback_info info) {
  static const char FN[] = "getRobustList";
  ARGS(1);
  INT_ARG(0, "pid", 0, INT32_MAX, pid);  // 0: the calling thread
  void *head = NULL;
  size_t len = 0;
  if (syscall(SYS_get_robust_list, (int)pid, &head, &len) == -1)
    return throw_sys(env, "get_robust_list", "", errno, pid);
  napi_value result;
  CHECK(napi_create_object(env, &result));
  if (!set_prop(env, result, "head", make_bigint(env, (uint64_t)(uintptr_t)head)) ||
      !set_prop(env, result, "len", make_int(env, (int64_t)len)))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

static napi_value js_prlimit(napi_env env, napi_callback_info info) {
  static const char FN[] = "prlimit";
  ARGS(2);
  INT_ARG(0, "pid", 0, INT32_MAX, pid);  // 0: the calling process
  INT_ARG(1, "resource", 0, INT32_MAX, resource);
  struct {
    uint64_t cur, max;
  } lim = {0, 0};
  if (syscall(SYS_prlimit64, (pid_t)pid, (unsigned int)resource, NULL, &lim) == -1) {
    int err = errno;
    char op[32];
    snprintf(op, sizeof op, "resource %lld", (long long)resource);
    return throw_sys(env, "prlimit64", op, err, pid);
  }
  napi_value result, cur, max;
  CHECK(napi_create_array_with_length(env, 2, &result));
  CHECK(napi_create_bigint_uint64(env, lim.cur, &cur));
  CHECK(napi_create_bigint_uint64(env, lim.max, &max));
  CHECK(napi_set_element(env, result, 0, cur));
  CHECK(napi_set_element(env, result, 1, max));
  return result;
}

static napi_value js_capget(napi_env env, napi_callback_info info) {
  static const char FN[] = "capget";
  ARGS(1);
  INT_ARG(0, "pid", 0, INT32_MAX, pid);  // 0: the calling thread
  struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = (int)pid};
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capget, &hdr, data) == -1)
    return throw_sys(env, "capget", "_LINUX_CAPABILITY_VERSION_3", errno, pid);
  uint64_t eff = (uint64_t)data[1].effective << 32 | data[0].effective;
  uint64_t prm = (uint64_t)data[1].permitted << 32 | data[0].permitted;
  uint64_t inh = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
  napi_value result;
  CHECK(napi_create_object(env, &result));
  if (!set_prop(env, result, "effective", make_bigint(env, eff)) ||
      !set_prop(env, result, "permitted", make_bigint(env, prm)) ||
      !set_prop(env, result, "inheritable", make_bigint(env, inh)))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

static napi_value js_pidfdOpen(napi_env env, napi_callback_info info) {
  static const char FN[] = "pidfdOpen";
  ARGS(2);
  PID_ARG(0, "pid", pid);
  U32_ARG(1, "flags", flags);
  long fd = syscall(SYS_pidfd_open, (pid_t)pid, (unsigned int)flags);
  if (fd == -1) return throw_sys(env, "pidfd_open", "", errno, pid);
  return make_int(env, fd);
}

// flock(2) on an fd Node opened: crest's locks on checkpoint directories
// (released by the kernel when the holder dies, however it dies).
static napi_value js_flock(napi_env env, napi_callback_info info) {
  static const char FN[] = "flock";
  ARGS(2);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  INT_ARG(1, "operation", 0, 15, op);
  int r;
  do r = flock((int)fd, (int)op);
  while (r == -1 && errno == EINTR);
  if (r == -1) return throw_sys(env, "flock", "", errno, 0);
  return NULL;
}

// ---------------------------------------------------------------------------
// Sockets crest holds a copy of (pidfd_getfd): the TCP connections of a job
// with its own network namespace, which crest may repair (TCP_REPAIR needs
// CAP_NET_ADMIN over the socket's namespace, and crest owns the job's user
// namespace). Plain calls on crest's own fd; never blocking when the caller
// passes MSG_DONTWAIT.

static napi_value js_pidfdGetfd(napi_env env, napi_callback_info info) {
  static const char FN[] = "pidfdGetfd";
  ARGS(2);
  INT_ARG(0, "pidfd", 0, INT32_MAX, pidfd);
  INT_ARG(1, "targetfd", 0, INT32_MAX, target);
  long fd = syscall(SYS_pidfd_getfd, (int)pidfd, (int)target, 0);
  if (fd == -1) return throw_sys(env, "pidfd_getfd", "", errno, 0);
  return make_int(env, fd);
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  static const char FN[] = "close";
  ARGS(1);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  if (close((int)fd) == -1 && errno != EINTR) return throw_sys(env, "close", "", errno, 0);
  return NULL;
}

// getsockopt into a buffer of `size` bytes; returns exactly the bytes the kernel filled.
static napi_value js_getsockopt(napi_env env, napi_callback_info info) {
  static const char FN[] = "getsockopt";
  ARGS(4);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  INT_ARG(1, "level", 0, INT32_MAX, level);
  INT_ARG(2, "name", 0, INT32_MAX, name);
  INT_ARG(3, "size", 1, 4096, size);
  unsigned char buf[4096];
  socklen_t len = (socklen_t)size;
  memset(buf, 0, sizeof buf);
  if (getsockopt((int)fd, (int)level, (int)name, buf, &len) == -1)
    return throw_sys(env, "getsockopt", "", errno, 0);
  napi_value out;
  void *data;
  CHECK(napi_create_buffer_copy(env, len, buf, &data, &out));
  return out;
}

static napi_value js_setsockopt(napi_env env, napi_callback_info info) {
  static const char FN[] = "setsockopt";
  ARGS(4);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  INT_ARG(1, "level", 0, INT32_MAX, level);
  INT_ARG(2, "name", 0, INT32_MAX, name);
  void *data;
  size_t len;
  if (!arg_buffer(env, FN, argv[3], 4, "value", &data, &len)) return NULL;
  if (setsockopt((int)fd, (int)level, (int)name, data, (socklen_t)len) == -1)
    return throw_sys(env, "setsockopt", "", errno, 0);
  return NULL;
}

// ioctl(fd, req, &int): SIOCINQ, SIOCOUTQ, SIOCOUTQNSD.
static napi_value js_ioctlInt(napi_env env, napi_callback_info info) {
  static const char FN[] = "ioctlInt";
  ARGS(2);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  U32_ARG(1, "request", req);
  int v = 0;
  if (ioctl((int)fd, (unsigned long)req, &v) == -1) return throw_sys(env, "ioctl", "", errno, 0);
  return make_int(env, v);
}

// ioctl(fd, req, buffer): the buffer is read and written in place (struct ifreq).
static napi_value js_ioctlBuffer(napi_env env, napi_callback_info info) {
  static const char FN[] = "ioctlBuffer";
  ARGS(3);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  U32_ARG(1, "request", req);
  void *data;
  size_t len;
  if (!arg_buffer(env, FN, argv[2], 3, "arg", &data, &len)) return NULL;
  if (len < 40) {
    type_error(env, FN, 3, "arg", "a Buffer of at least 40 bytes");
    return NULL;
  }
  if (ioctl((int)fd, (unsigned long)req, data) == -1) return throw_sys(env, "ioctl", "", errno, 0);
  return NULL;
}

static napi_value sock_io(napi_env env, napi_callback_info info, const char *FN, bool out) {
  ARGS(5);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  void *data;
  size_t blen;
  if (!arg_buffer(env, FN, argv[1], 2, "buf", &data, &blen)) return NULL;
  INT_ARG(2, "off", 0, (int64_t)blen, off);
  INT_ARG(3, "len", 0, (int64_t)blen - off, len);
  INT_ARG(4, "flags", 0, INT32_MAX, flags);
  ssize_t n;
  do n = out ? send((int)fd, (char *)data + off, (size_t)len, (int)flags)
             : recv((int)fd, (char *)data + off, (size_t)len, (int)flags);
  while (n == -1 && errno == EINTR);
  if (n == -1) return throw_sys(env, out ? "send" : "recv", "", errno, 0);
  return make_int(env, n);
}

static napi_value js_recv(napi_env env, napi_callback_info info) {
  return sock_io(env, info, "recv", false);
}

static napi_value js_send(napi_env env, napi_callback_info info) {
  return sock_io(env, info, "send", true);
}

static napi_value sock_addr(napi_env env, napi_callback_info info, const char *FN, bool conn) {
  ARGS(2);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  void *data;
  size_t len;
  if (!arg_buffer(env, FN, argv[1], 2, "sockaddr", &data, &len)) return NULL;
  int r = conn ? connect((int)fd, data, (socklen_t)len) : bind((int)fd, data, (socklen_t)len);
  if (r == -1) return throw_sys(env, conn ? "connect" : "bind", "", errno, 0);
  return NULL;
}

static napi_value js_bind(napi_env env, napi_callback_info info) {
  return sock_addr(env, info, "bind", false);
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  return sock_addr(env, info, "connect", true);
}

// getsockname, or getpeername with peer true: the sockaddr bytes.
static napi_value js_sockName(napi_env env, napi_callback_info info) {
  static const char FN[] = "sockName";
  ARGS(2);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  bool peer;
  if (!arg_bool(env, FN, argv[1], 2, "peer", &peer)) return NULL;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  int r = peer ? getpeername((int)fd, (struct sockaddr *)&ss, &len) : getsockname((int)fd, (struct sockaddr *)&ss, &len);
  if (r == -1) return throw_sys(env, peer ? "getpeername" : "getsockname", "", errno, 0);
  napi_value out;
  void *data;
  CHECK(napi_create_buffer_copy(env, len, &ss, &data, &out));
  return out;
}

static void munmap_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

// A Buffer backed by its own anonymous mapping: page-aligned, as O_DIRECT
// I/O needs. Pages are touched on first use only (a small dump uses few).
static napi_value js_mmapBuffer(napi_env env, napi_callback_info info) {
  static const char FN[] = "mmapBuffer";
  ARGS(1);
  INT_ARG(0, "size", 4096, 1L << 30, size);
  void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return throw_sys(env, "mmap", "aligned buffer", errno, 0);
  napi_value buf;
  if (napi_create_external_buffer(env, (size_t)size, p, munmap_finalize, (void *)(uintptr_t)size, &buf) != napi_ok) {
    munmap(p, (size_t)size);
    return napi_failed(env, "napi_create_external_buffer");
  }
  return buf;
}

static napi_value js_unameRelease(napi_env env, napi_callback_info info) {
  (void)info;
  struct utsname u;
  if (uname(&u) == -1) return throw_sys(env, "uname", "", errno, 0);
  napi_value s;
  CHECK(napi_create_string_utf8(env, u.release, NAPI_AUTO_LENGTH, &s));
  return s;
}

static napi_value js_getxattr(napi_env env, napi_callback_info info) {
  static const char FN[] = "getxattr";
  ARGS(2);
  char *path = NULL, *name = NULL;
  if (!arg_cstring(env, FN, argv[0], 1, "path", &path)) return NULL;
  if (!arg_cstring(env, FN, argv[1], 2, "name", &name)) {
    free(path);
    return NULL;
  }
  napi_value result = NULL;
  char *value = NULL;
  // First ask for the size, then read the value.
  ssize_t size = getxattr(path, name, NULL, 0);
  if (size > 0) {
    value = malloc((size_t)size);
    if (!value) {
      errno = ENOMEM;
      size = -1;
    } else {
      size = getxattr(path, name, value, (size_t)size);
    }
  }
  int err = errno;
  napi_status s = napi_ok;
  if (size >= 0)
    s = napi_create_buffer_copy(env, (size_t)size, value ? value : "", NULL, &result);
  else if (err == ENODATA)
    s = napi_get_null(env, &result);
  else
    throw_sys(env, "getxattr", name, err, 0);
  if (s != napi_ok) result = napi_failed(env, "getxattr result");
  free(value);
  free(name);
  free(path);
  return result;
}

// ---------------------------------------------------------------------------
// Kernel feature probes (their "failure" is an answer, not an exception).

static napi_value probe_result(napi_env env, bool ok, int err, const uint64_t *features) {
  napi_value result, vok;
  CHECK(napi_create_object(env, &result));
  CHECK(napi_get_boolean(env, ok, &vok));
  if (!set_prop(env, result, "ok", vok) || !set_prop(env, result, "errno", make_int(env, err)) ||
      (features && !set_prop(env, result, "features", make_bigint(env, *features))))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

static napi_value js_uffdProbe(napi_env env, napi_callback_info info) {
  (void)info;
  uint64_t features = 0;
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd == -1) return probe_result(env, false, errno, &features);
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  int r = ioctl((int)fd, UFFDIO_API, &api);
  int err = errno;
  close((int)fd);
  if (r == -1) return probe_result(env, false, err, &features);
  features = api.features;
  return probe_result(env, true, 0, &features);
}

static napi_value js_pagemapScanProbe(napi_env env, napi_callback_info info) {
  (void)info;
  static volatile char page[4096] __attribute__((aligned(4096)));
  page[0] = 1;  // make it present
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd == -1) return probe_result(env, false, errno, NULL);
  struct crest_page_region region;
  struct crest_pm_scan_arg arg = {
      .size = sizeof arg,
      .start = (uint64_t)(uintptr_t)page,
      .end = (uint64_t)(uintptr_t)page + sizeof page,
      .vec = (uint64_t)(uintptr_t)&region,
      .vec_len = 1,
      .category_anyof_mask = CREST_PAGE_IS_PRESENT,
      .return_mask = CREST_PAGE_IS_PRESENT,
  };
  int r = ioctl(fd, CREST_PAGEMAP_SCAN, &arg);
  int err = errno;
  close(fd);
  if (r < 0) return probe_result(env, false, err, NULL);
  return probe_result(env, true, 0, NULL);
}

// ioctl(PAGEMAP_SCAN) on a pagemap fd (/proc/PID/pagemap of a process we may
// trace): the regions of [start, end) whose page categories match, written
// as {start, end, categories} u64 triples into `out`. With PM_SCAN_WP_MATCHING
// (flags bit 0) the matching pages are write-protected again (userfaultfd
// async write-protect). Returns {n, walkEnd}: the scan stops early when `out`
// is full; walkEnd says where to go on.
static napi_value js_pagemapScan(napi_env env, napi_callback_info info) {
  static const char FN[] = "pagemapScan";
  ARGS(8);
  INT_ARG(0, "fd", 0, INT32_MAX, fd);
  INT_ARG(1, "start", 0, MAX_SAFE_INT, start);
  INT_ARG(2, "end", 0, MAX_SAFE_INT, end);
  INT_ARG(3, "flags", 0, 3, flags);
  INT_ARG(4, "categoryMask", 0, 0xff, mask);
  INT_ARG(5, "anyofMask", 0, 0xff, anyof);
  INT_ARG(6, "returnMask", 0, 0xff, ret);
  void *out;
  size_t outLen;
  if (!arg_buffer(env, FN, argv[7], 8, "out", &out, &outLen)) return NULL;
  if (outLen < sizeof(struct crest_page_region)) {
    type_error(env, FN, 8, "out", "a Buffer of at least 24 bytes");
    return NULL;
  }
  struct crest_pm_scan_arg arg = {
      .size = sizeof arg,
      .flags = (uint64_t)flags,
      .start = (uint64_t)start,
      .end = (uint64_t)end,
      .vec = (uint64_t)(uintptr_t)out,
      .vec_len = outLen / sizeof(struct crest_page_region),
      .category_mask = (uint64_t)mask,
      .category_anyof_mask = (uint64_t)anyof,
      .return_mask = (uint64_t)ret,
  };
  int r = ioctl((int)fd, CREST_PAGEMAP_SCAN, &arg);
  if (r < 0) return throw_sys(env, "ioctl", "PAGEMAP_SCAN", errno, 0);
  napi_value result;
  CHECK(napi_create_object(env, &result));
  if (!set_prop(env, result, "n", make_int(env, r)) ||
      !set_prop(env, result, "walkEnd", make_int(env, (int64_t)arg.walk_end)))
    return napi_failed(env, "napi_set_named_property");
  return result;
}

// ---------------------------------------------------------------------------
// zstd (libzstd, when the build found it): page compression for images.
// One block per call, into a buffer the caller owns: no allocation per call.

// buf[off, off+len) of a Buffer argument, checked.
static bool arg_range(napi_env env, const char *fn, napi_value *argv, int i, const char *name,
                      uint8_t **p, size_t *len) {
  void *data;
  size_t size;
  int64_t off, n;
  if (!arg_buffer(env, fn, argv[i], i + 1, name, &data, &size)) return false;
  if (!arg_int(env, fn, argv[i + 1], i + 2, "offset", 0, (int64_t)size, &off)) return false;
  if (!arg_int(env, fn, argv[i + 2], i + 3, "length", 0, (int64_t)size - off, &n)) return false;
  *p = (uint8_t *)data + off;
  *len = (size_t)n;
  return true;
}

static napi_value js_zstdVersion(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
#ifdef CREST_HAVE_ZSTD
  CHECK(napi_create_string_utf8(env, ZSTD_versionString(), NAPI_AUTO_LENGTH, &r));
#else
  CHECK(napi_get_null(env, &r));
#endif
  return r;
}

#ifdef CREST_HAVE_ZSTD
static napi_value zstd_error(napi_env env, const char *what, size_t code) {
  char msg[256];
  snprintf(msg, sizeof msg, "zstd %s failed: %s", what, ZSTD_getErrorName(code));
  napi_throw_error(env, "CREST_ZSTD", msg);
  return NULL;
}
#endif

// zstdCompress(src, srcOff, srcLen, dst, dstOff, dstLen, level) -> bytes written.
static napi_value js_zstdCompress(napi_env env, napi_callback_info info) {
  static const char FN[] = "zstdCompress";
  ARGS(7);
  uint8_t *src, *dst;
  size_t slen, dlen;
  if (!arg_range(env, FN, argv, 0, "src", &src, &slen) || !arg_range(env, FN, argv, 3, "dst", &dst, &dlen)) return NULL;
  INT_ARG(6, "level", -131072, 22, level);
#ifdef CREST_HAVE_ZSTD
  crest_state *st = get_state(env);
  if (!st->cctx && !(st->cctx = ZSTD_createCCtx())) return zstd_error(env, "context", (size_t)-1);
  size_t r = ZSTD_CCtx_setParameter(st->cctx, ZSTD_c_compressionLevel, (int)level);
  if (ZSTD_isError(r)) return zstd_error(env, "level", r);
  r = ZSTD_compress2(st->cctx, dst, dlen, src, slen);
  if (ZSTD_isError(r)) return zstd_error(env, "compress", r);
  return make_int(env, (int64_t)r);
#else
  (void)src; (void)dst; (void)slen; (void)dlen; (void)level;
  napi_throw_error(env, "CREST_NO_ZSTD", "crest's native addon was built without libzstd");
  return NULL;
#endif
}

// zstdCompressAsync(src, srcOff, srcLen, dst, dstOff, dstLen, level) -> Promise of
// the bytes written. The one call that runs off the JS thread: on the libuv
// pool, so that pages are compressed on a spare core while crest reads and
// hashes the next ones. Both buffers stay referenced until it settles, and
// must not be touched meanwhile.
typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref src_ref, dst_ref;
  const uint8_t *src;
  uint8_t *dst;
  size_t slen, dlen, result;
  int level;
} zstd_job;

#ifdef CREST_HAVE_ZSTD
// One context per pool thread, kept for the life of the thread.
static __thread ZSTD_CCtx *pool_cctx;

static void zstd_job_execute(napi_env env, void *data) {
  (void)env;
  zstd_job *j = data;
  if (!pool_cctx) pool_cctx = ZSTD_createCCtx();
  if (!pool_cctx) {
    j->result = (size_t)-1;
    return;
  }
  size_t r = ZSTD_CCtx_setParameter(pool_cctx, ZSTD_c_compressionLevel, j->level);
  j->result = ZSTD_isError(r) ? r : ZSTD_compress2(pool_cctx, j->dst, j->dlen, j->src, j->slen);
}
#endif

static void zstd_job_complete(napi_env env, napi_status status, void *data) {
  zstd_job *j = data;
  napi_value v;
#ifdef CREST_HAVE_ZSTD
  if (status == napi_ok && !ZSTD_isError(j->result) && napi_create_int64(env, (int64_t)j->result, &v) == napi_ok) {
    napi_resolve_deferred(env, j->deferred, v);
  } else {
    napi_value msg, err;
    char text[160];
    snprintf(text, sizeof text, "zstd compress failed: %s", status != napi_ok ? "cancelled" : ZSTD_getErrorName(j->result));
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, j->deferred, err);
  }
#else
  (void)status;
  (void)v;
#endif
  napi_delete_reference(env, j->src_ref);
  napi_delete_reference(env, j->dst_ref);
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value js_zstdCompressAsync(napi_env env, napi_callback_info info) {
  static const char FN[] = "zstdCompressAsync";
  ARGS(7);
  uint8_t *src, *dst;
  size_t slen, dlen;
  if (!arg_range(env, FN, argv, 0, "src", &src, &slen) || !arg_range(env, FN, argv, 3, "dst", &dst, &dlen)) return NULL;
  INT_ARG(6, "level", -131072, 22, level);
#ifdef CREST_HAVE_ZSTD
  zstd_job *j = calloc(1, sizeof *j);
  if (!j) {
    napi_throw_error(env, "CREST_NOMEM", "crest_native: out of memory");
    return NULL;
  }
  j->src = src;
  j->dst = dst;
  j->slen = slen;
  j->dlen = dlen;
  j->level = (int)level;
  napi_value promise, name;
  if (napi_create_reference(env, argv[0], 1, &j->src_ref) != napi_ok ||
      napi_create_reference(env, argv[3], 1, &j->dst_ref) != napi_ok ||
      napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "crest-zstd", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, zstd_job_execute, zstd_job_complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    return napi_failed(env, "zstdCompressAsync setup");
  }
  return promise;
#else
  (void)src; (void)dst; (void)slen; (void)dlen; (void)level;
  napi_throw_error(env, "CREST_NO_ZSTD", "crest's native addon was built without libzstd");
  return NULL;
#endif
}

// zstdDecompress(src, srcOff, srcLen, dst, dstOff, dstLen) -> bytes written.
static napi_value js_zstdDecompress(napi_env env, napi_callback_info info) {
  static const char FN[] = "zstdDecompress";
  ARGS(6);
  uint8_t *src, *dst;
  size_t slen, dlen;
  if (!arg_range(env, FN, argv, 0, "src", &src, &slen) || !arg_range(env, FN, argv, 3, "dst", &dst, &dlen)) return NULL;
#ifdef CREST_HAVE_ZSTD
  crest_state *st = get_state(env);
  if (!st->dctx && !(st->dctx = ZSTD_createDCtx())) return zstd_error(env, "context", (size_t)-1);
  size_t r = ZSTD_decompressDCtx(st->dctx, dst, dlen, src, slen);
  if (ZSTD_isError(r)) return zstd_error(env, "decompress", r);
  return make_int(env, (int64_t)r);
#else
  (void)src; (void)dst; (void)slen; (void)dlen;
  napi_throw_error(env, "CREST_NO_ZSTD", "crest's native addon was built without libzstd");
  return NULL;
#endif
}

// ---------------------------------------------------------------------------
// Module

#define FUNC(name) {#name, NULL, js_##name, NULL, NULL, NULL, napi_enumerable, NULL}

static napi_value init(napi_env env, napi_value exports) {
  crest_state *st = calloc(1, sizeof *st);
  if (!st) {
    napi_throw_error(env, "CREST_NOMEM", "crest_native: out of memory");
    return NULL;
  }
  if (napi_set_instance_data(env, st, state_finalize, NULL) != napi_ok) {
    free(st);
    return napi_failed(env, "napi_set_instance_data");
  }
  static const napi_property_descriptor props[] = {
      FUNC(setErrorClass),
      FUNC(ptraceSeize),
      FUNC(ptraceInterrupt),
      FUNC(ptraceDetach),
      FUNC(ptraceCont),
      FUNC(ptraceSingleStep),
      FUNC(ptraceSyscall),
      FUNC(ptraceSetOptions),
      FUNC(ptraceGetRegs),
      FUNC(ptraceSetRegs),
      FUNC(ptraceGetRegset),
      FUNC(ptraceSetRegset),
      FUNC(ptraceGetSigmask),
      FUNC(ptraceSetSigmask),
      FUNC(ptracePeekSiginfo),
      FUNC(ptraceGetSiginfo),
      FUNC(ptraceGetEventMsg),
      FUNC(ptraceGetRseqConfig),
      FUNC(waitpid),
      FUNC(processVmReadv),
      FUNC(processVmWritev),
      FUNC(kill),
      FUNC(tgkill),
      FUNC(kcmp),
      FUNC(getRobustList),
      FUNC(prlimit),
      FUNC(capget),
      FUNC(pidfdOpen),
      FUNC(flock),
      FUNC(pidfdGetfd),
      FUNC(close),
      FUNC(getsockopt),
      FUNC(setsockopt),
      FUNC(ioctlInt),
      FUNC(ioctlBuffer),
      FUNC(recv),
      FUNC(send),
      FUNC(bind),
      FUNC(connect),
      FUNC(sockName),
      FUNC(zstdVersion),
      FUNC(zstdCompress),
      FUNC(zstdCompressAsync),
      FUNC(zstdDecompress),
      FUNC(unameRelease),
      FUNC(mmapBuffer),
      FUNC(getxattr),
      FUNC(uffdProbe),
      FUNC(pagemapScanProbe),
      FUNC(pagemapScan),
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
