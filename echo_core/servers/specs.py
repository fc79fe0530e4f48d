"""Server specs: one string names an echo server design, e.g. ``uring+mshot+bundle`` or ``uring(buf_count=16)``.

Grammar (no spaces; names are lower case; values are decimal integers)::

    spec     := element ("+" element)*          the first element is the base, the others features
    element  := name ["(" tunable ("," tunable)* ")"]
    tunable  := name "=" integer
    base     := "uring" | "epoll"               ("exec:CMD" is an external server, see echo_core.servers.external;
                                                 it is not parsed here and passes through unchanged)

Each tunable belongs to one element (see BASES and FEATURES).  A base tunable may also be written in a
feature's parentheses, e.g. ``uring+inc(buf_count=64)``, and means the same as on the base.

Canonical form (``str(Spec)``, what the ``impl`` column, chart legends and grouping use): features in
the fixed order of FEATURES (their bit order), each element's tunables sorted by name, a tunable equal
to its default omitted, base tunables on the base: ``uring+inc(buf_count=64)`` is
``uring(buf_count=64)+inc``.  ``uring`` and ``epoll`` are exactly today's two servers, so results
measured before specs existed stay comparable.

Refused combinations (ValueError, one line, before any process starts; the C server returns -EINVAL
for the same): ``bundle`` needs ``mshot`` and excludes ``inc``; ``sendring`` needs ``bundle`` and excludes
``zc``; ``connbuf`` excludes ``mshot``, ``bundle``, ``inc``, ``zc``, ``grow`` and ``huge`` (it has no provided
buffers, and its next recv would overwrite bytes a zero-copy send may still be reading); ``epoll`` takes
no features, only its tunables ``budget`` and ``buf_size``.  A feature this kernel (or this build of
the C core) cannot run is not a parse error: unsupported_reason(spec) says why, and a sweep records
such cells as skipped.

    >>> s = parse("uring+batch(wait_us=50,nr=16)+mshot")
    >>> str(s), s.to_server_options()
    ('uring+mshot+batch(nr=16,wait_us=50)', {'features': 17, 'mshot_budget': 0, 'mshot_own_cap': 0, 'batch_nr': 16, 'batch_wait_us': 50, 'batch_after': 0})
"""

import functools
import os
import platform
import re
import shlex
from dataclasses import dataclass, field

from echo_core.servers.options import DEFAULT_OPTIONS
from echo_core.host.machine import io_uring_info
from echo_core.native import ffi, lib

#: An implementation "exec:CMD" runs CMD as an external server (echo_core.servers.external).
EXEC_PREFIX = "exec:"


@dataclass(frozen=True)
class Tunable:
    """A spec tunable: its server option, default (None: the server's own default), and range."""
    option: str
    default: object
    low: int
    high: int
    description: str
    power_of_two: bool = False

    def check(self, owner, name, value):
        if not self.low <= value <= self.high:
            raise ValueError(f"{owner}({name}=...) must be in {self.low}..{self.high}, got {value}")
        if self.power_of_two and value & (value - 1):
            raise ValueError(f"{owner}({name}=...) must be a power of two, got {value}")


@dataclass(frozen=True)
class Feature:
    """A server feature: its EC_FEAT_* bit name, tunables, what the kernel must offer, and what it does."""
    name: str
    bit_name: str
    description: str
    kernel: str                      # human-readable requirement, for the README's table
    tunables: dict = field(default_factory=dict)


#: Base designs and their tunables (spec name -> Tunable).  Defaults are echo_core.servers.options.DEFAULT_OPTIONS'.
BASES = {
    "uring": {
        "buf_count": Tunable("buf_count", DEFAULT_OPTIONS["buf_count"], 1, 32768, "provided buffers in the ring", power_of_two=True),
        "buf_size": Tunable("buf_size", DEFAULT_OPTIONS["buf_size"], 1, 1 << 30, "bytes per receive buffer"),
        "ring_entries": Tunable("ring_entries", DEFAULT_OPTIONS["ring_entries"], 1, 32768, "submission queue entries"),
    },
    "epoll": {
        "budget": Tunable("epoll_budget", DEFAULT_OPTIONS["epoll_budget"], 1, 1 << 20, "recv/send operations per connection per turn"),
        "buf_size": Tunable("buf_size", DEFAULT_OPTIONS["buf_size"], 1, 1 << 30, "bytes per connection buffer"),
        "spin_us": Tunable("epoll_spin_us", DEFAULT_OPTIONS["epoll_spin_us"], 0, lib.EC_MAX_SPIN_US,
                           "poll (epoll_wait timeout 0) this long before blocking, µs"),
        "lt": Tunable("epoll_level", DEFAULT_OPTIONS["epoll_level"], 0, 1,
                      "1: level-triggered, EPOLLIN while there is room, EPOLLOUT while a send is blocked"),
        "busy_poll_us": Tunable("epoll_busy_poll_us", DEFAULT_OPTIONS["epoll_busy_poll_us"], 0, lib.EC_MAX_SPIN_US,
                                "the kernel's epoll busy poll (EPIOCSPARAMS), µs; no effect on loopback"),
    },
}

#: The io_uring features in canonical order (= bit order of EC_FEAT_*).
FEATURES = {f.name: f for f in (
    Feature("mshot", "EC_FEAT_MSHOT",
            "multishot recv per connection with an ordered send queue; back-pressure when the queue is full",
            "Linux 6.0 (multishot recv)",
            {"budget": Tunable("mshot_budget", 0, 0, 1 << 20,
                               "cap on what one multishot invocation may take (0: the server's default)"),
             "own_cap": Tunable("mshot_own_cap", 0, 0, 1,
                                "1: only the server's budget bounds a multishot recv, not the kernel's byte cap "
                                "(Linux 6.17): the path of older kernels")}),
    Feature("bundle", "EC_FEAT_BUNDLE", "recv/send bundles: one completion spans several buffers",
            "IORING_FEAT_RECVSEND_BUNDLE (Linux 6.10)"),
    Feature("inc", "EC_FEAT_INC", "incremental buffer consumption (IOU_PBUF_RING_INC): large buffers, partly used",
            "Linux 6.12"),
    Feature("connbuf", "EC_FEAT_CONNBUF", "no provided buffers: each connection receives into its own buffer",
            "any"),
    Feature("batch", "EC_FEAT_BATCH", "wait for several completions per io_uring_enter, bounded by a short timeout",
            "IORING_FEAT_EXT_ARG (5.11); min-wait timeout IORING_FEAT_MIN_TIMEOUT (6.12) where available",
            {"nr": Tunable("batch_nr", lib.EC_DEFAULT_BATCH_NR, 1, 4096, "completions to wait for"),
             "wait_us": Tunable("batch_wait_us", lib.EC_DEFAULT_BATCH_WAIT_US, 1, 1_000_000,
                                "longest wait for a batch, µs"),
             "after": Tunable("batch_after", 0, 0, 4096,
                              "linger only after a wake-up that found at least this many completions, "
                              "else wait for one with no timer (0: always linger)")}),
    Feature("pollfirst", "EC_FEAT_POLLFIRST", "IORING_RECVSEND_POLL_FIRST: arm poll instead of trying the recv inline",
            "Linux 5.19"),
    Feature("zc", "EC_FEAT_ZC", "send_zc: zero-copy sends, buffers recycled on the notification",
            "IORING_OP_SEND_ZC (Linux 6.0)"),
    Feature("sqpoll", "EC_FEAT_SQPOLL", "a kernel SQ polling thread (takes a CPU of its own)",
            "IORING_FEAT_SQPOLL_NONFIXED (5.11)",
            {"cpu": Tunable("sqpoll_cpu", None, 0, 4095, "CPU the SQ thread is pinned to (default: not pinned)")}),
    Feature("napi", "EC_FEAT_NAPI", "NAPI busy-poll registration (no effect on loopback)", "Linux 6.9"),
    Feature("grow", "EC_FEAT_GROW",
            "a pool that starts small and grows while recvs often find it empty (-ENOBUFS), up to buf_count",
            "any (as provided buffers)",
            {"start": Tunable("grow_start", lib.EC_DEFAULT_GROW_BLOCK, 1, 32768, "buffers provided at start"),
             "step": Tunable("grow_step", lib.EC_DEFAULT_GROW_BLOCK, 1, 32768, "buffers added per growth")}),
    Feature("huge", "EC_FEAT_HUGE",
            "the provided-buffer pool on transparent huge pages (2 MiB-aligned, madvise): one TLB entry per 2 MiB",
            "transparent huge pages (/sys/kernel/mm/transparent_hugepage/enabled: always or madvise)"),
    Feature("sendring", "EC_FEAT_SENDRING",
            "gathered sends as the kernel's send bundles: the queued segments go into the connection's own "
            "buffer ring and one send takes them all, instead of a sendmsg whose iovec the kernel copies in",
            "IORING_FEAT_RECVSEND_BUNDLE (Linux 6.10)"),
)}

#: The one io_uring design echo_core recommends (issue 18), fixed before its confirmatory runs and never
#: tuned per cell: multishot recv with bundles into a pool sized to the cache -- 64 buffers of 16 KiB,
#: 1 MiB, where the default 4096 x 64 KiB (256 MiB) outgrows even the L3, so every receive copied into
#: cold memory (profile of stream 16 KiB x 8: _copy_to_iter 1.6-1.9 us/msg against 0.8 in a 512 KiB pool
#: and epoll's 0.6-0.8) -- with the multishot budget its default, a quarter of the pool (16 buffers), and
#: no batched wait (its timed waits cost 2 us/msg in io_cqring_wait on a KVM guest, timer programming).
#: Picked by a rule stated before the runs: the lowest median, over the 12 cells of the exploratory set
#: explore-pool-20261204-stream and -rr (data/), of server CPU per message / the better epoll spec's.
RECOMMENDED = "uring(buf_count=64,buf_size=16384)+mshot+bundle"

#: The recommended design on a growing pool (issue 18's candidate): the same 64 buffers of 16 KiB at
#: start, 64 more whenever one recv in 32 found the pool empty, up to 1024 (16 MiB) -- the pool size at which
#: rr 512 B x 64 had no -ENOBUFS (explore-pool2-20261204).  Cache-sized while the load holds few buffers
#: at once, as large as it needs (and no larger) when many connections do.
GROWING = "uring(buf_count=1024,buf_size=16384)+mshot+bundle+grow"

#: The recommended design as it runs on kernels before 6.17, which have no multishot byte cap: only the
#: server's own budget (cancel a connection's recv once its queue is full) bounds what one recv takes.
RECOMMENDED_OWN_CAP = RECOMMENDED.replace("+mshot", "+mshot(own_cap=1)")

#: The specs of the ablation study (issue 10), in the order charts show them; the `ablation` grid runs
#: epoll and these.  Every spec `python -m echo_core impls` lists is in CATALOGUE below.
ABLATION_SPECS = (
    RECOMMENDED,
    "uring",
    "uring(buf_count=16)",
    "uring+connbuf",
    "uring+mshot",
    "uring+mshot+bundle",
    "uring+mshot+inc",
    "uring+mshot+batch",
    "uring+mshot+bundle+batch",
    # The recommended design with an adaptive batched wait (issue 18): it lingers for batch_nr (8)
    # completions only after a wake-up that found at least half as many (after=4, fixed before its runs).
    RECOMMENDED + "+batch(after=4)",
    # The recommended design on a pool that grows under -ENOBUFS (issue 18).
    GROWING,
    # The recommended design's pool on transparent huge pages (issue 18).
    RECOMMENDED + "+huge",
    # The recommended design without the kernel's multishot byte cap (issue 18).
    RECOMMENDED_OWN_CAP,
    # The recommended design sending its gathered segments as the kernel's send bundles (issue 18).
    RECOMMENDED + "+sendring",
    "uring+pollfirst",
    "uring+zc",
)


def features_built():
    """Does the compiled C core know server features (lib.EC_FEAT_MSHOT and the config's features field)?"""
    fields = dict(ffi.typeof("struct ec_server_config").fields)
    return hasattr(lib, "EC_FEAT_MSHOT") and "features" in fields


def feature_bit(name):
    """The EC_FEAT_* bit of a feature: from the compiled module, else the fallback table (see there)."""
    bit_name = FEATURES[name].bit_name
    return getattr(lib, bit_name)


@dataclass(frozen=True)
class Spec:
    """A parsed, validated spec.  ``options`` maps spec tunable names to values, per element:
    {"uring": {...}, "batch": {...}}; only values that differ from the default are kept."""
    base: str
    features: tuple = ()
    options: tuple = ()   # ((element, ((name, value), ...)), ...), sorted: hashable and canonical

    def tunables(self, element):
        return dict(dict(self.options).get(element, ()))

    def __str__(self):
        parts = []
        for element in (self.base,) + self.features:
            tun = self.tunables(element)
            args = ",".join(f"{k}={v}" for k, v in sorted(tun.items()))
            parts.append(f"{element}({args})" if args else element)
        return "+".join(parts)

    def without_base_tunables(self):
        """The same features (and their tunables) on the base's defaults: for a caller that sets the
        pool or buffer sizes itself, which the server would otherwise refuse as a conflict."""
        return Spec(self.base, self.features, tuple((o, v) for o, v in self.options if o != self.base))

    @property
    def bits(self):
        out = 0
        for name in self.features:
            out |= feature_bit(name)
        return out

    def to_server_options(self):
        """The server options (echo_core.servers.serve option names) this spec sets.  ``uring`` and ``epoll``
        set none; a feature sets ``features`` and its tunables (defaults included, except a default
        of None, which leaves the server's own); base tunables appear only when not the default."""
        out = {}
        for name, value in self.tunables(self.base).items():
            out[BASES[self.base][name].option] = value
        if self.features:
            out["features"] = self.bits
        for feat in self.features:
            given = self.tunables(feat)
            for name, tun in FEATURES[feat].tunables.items():
                value = given.get(name, tun.default)
                if value is not None:
                    out[tun.option] = value
        return out


_ELEMENT = re.compile(r"([a-z_][a-z0-9_]*)(?:\(([^()]*)\))?$")


def _split_elements(text):
    """Split on '+' outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in spec {text!r}")
        if ch == "+" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced '(' in spec {text!r}")
    return parts + [cur]


def _parse_args(spec_text, element, args):
    out = {}
    if args is None:
        return out
    if not args:
        raise ValueError(f"empty parentheses after {element!r} in spec {spec_text!r}")
    for item in args.split(","):
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or not re.fullmatch(r"-?\d+", value):
            raise ValueError(f"bad tunable {item!r} in spec {spec_text!r}: expected name=integer")
        if name in out:
            raise ValueError(f"tunable {name!r} given twice in spec {spec_text!r}")
        out[name] = int(value)
    return out


def parse_exec(spec):
    """Split an "exec:CMD" spec into argv (placeholders still in it); ValueError if malformed."""
    if not isinstance(spec, str) or not spec.startswith(EXEC_PREFIX):
        raise ValueError(f"an external server spec looks like {EXEC_PREFIX}CMD, got {spec!r}")
    try:
        argv = shlex.split(spec[len(EXEC_PREFIX):])
    except ValueError as exc:
        raise ValueError(f"cannot parse the command of {spec!r}: {exc}") from None
    if not argv:
        raise ValueError(f"empty command in {spec!r}; expected {EXEC_PREFIX}CMD with {{port}} in CMD")
    if not any("{port}" in arg for arg in argv):
        raise ValueError(f"the command of {spec!r} has no {{port}}: the server must be told where to "
                         "listen")
    return argv


def is_exec(impl):
    return isinstance(impl, str) and impl.startswith(EXEC_PREFIX)


def parse(text):
    """Parse and validate a spec string (or pass a Spec through); ValueError with one clear line.

    A run names its spec in many places (server, row, labels): each distinct string is parsed once."""
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str):
        return _parse_text(text)
    return _parse_cached(text)


@functools.lru_cache(maxsize=1024)
def _parse_cached(text):
    return _parse_text(text)


def _parse_text(text):
    bases = f"{', '.join(BASES)} (or {EXEC_PREFIX}CMD with {{port}} in CMD)"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"unknown implementation {text!r}: a server spec is a string like uring, epoll or "
                         f"uring+mshot whose base is one of {bases}")
    if is_exec(text):
        raise ValueError(f"{text!r} is an external server (exec:CMD), not a spec of echo_core's servers")
    spec_text = text.strip()
    head = re.split(r"[+()\s]", spec_text, maxsplit=1)[0]
    if head not in BASES:
        raise ValueError(f"unknown implementation {head!r}" + (f" in spec {spec_text!r}" if head != spec_text else "")
                         + f"; the base is one of {bases}")
    if any(ch.isspace() for ch in spec_text):
        raise ValueError(f"no spaces in a spec, got {text!r}")
    elements = []
    for part in _split_elements(spec_text):
        m = _ELEMENT.match(part)
        if not m and not elements and "(" not in part:
            raise ValueError(f"unknown implementation {part!r}; a spec's base is one of {', '.join(BASES)} "
                             f"(or {EXEC_PREFIX}CMD with {{port}} in CMD)")
        if not m:
            raise ValueError(f"cannot parse {part!r} in spec {spec_text!r}: expected name or name(key=value,...)")
        elements.append((m.group(1), _parse_args(spec_text, m.group(1), m.group(2))))
    base, base_args = elements[0]
    if base not in BASES:
        where = "" if spec_text == base else f" in spec {spec_text!r}"
        raise ValueError(f"unknown implementation {base!r}{where}; the base is one of "
                         f"{', '.join(BASES)} (or {EXEC_PREFIX}CMD with {{port}} in CMD)")
    tunables = {base: {}}
    features = []

    def put(owner, name, value):
        table = BASES[base] if owner == base else FEATURES[owner].tunables
        table[name].check(owner, name, value)
        if name in tunables.setdefault(owner, {}):
            raise ValueError(f"tunable {name!r} given twice in spec {spec_text!r}")
        tunables[owner][name] = value

    for name, value in base_args.items():
        if name not in BASES[base]:
            raise ValueError(f"{base} has no tunable {name!r} (it has: {', '.join(BASES[base])})")
        put(base, name, value)
    for feat, args in elements[1:]:
        if base == "epoll":
            raise ValueError(f"epoll takes no features, got {feat!r} in {spec_text!r} "
                             f"(only its tunables: epoll({','.join(k + '=N' for k in BASES['epoll'])}))")
        if feat == base or feat in BASES:
            raise ValueError(f"{feat!r} is a base, not a feature, in spec {spec_text!r}")
        if feat not in FEATURES:
            raise ValueError(f"unknown feature {feat!r} in spec {spec_text!r}; features: {', '.join(FEATURES)}")
        if feat in features:
            raise ValueError(f"feature {feat!r} given twice in spec {spec_text!r}")
        features.append(feat)
        for name, value in args.items():
            if name in FEATURES[feat].tunables:
                put(feat, name, value)
            elif name in BASES[base]:
                put(base, name, value)
            else:
                own = list(FEATURES[feat].tunables) + list(BASES[base])
                raise ValueError(f"{feat} has no tunable {name!r} (tunables here: {', '.join(own)})")
    if "bundle" in features and "mshot" not in features:
        raise ValueError(f"{spec_text!r}: bundle needs mshot (e.g. uring+mshot+bundle)")
    if "bundle" in features and "inc" in features:
        raise ValueError(f"{spec_text!r}: bundle excludes inc (a bundle takes whole buffers)")
    if "sendring" in features and ("bundle" not in features or "zc" in features):
        raise ValueError(f"{spec_text!r}: sendring needs bundle and excludes zc (only bundles gather sends, "
                         "not with zero-copy; e.g. uring+mshot+bundle+sendring)")
    if "grow" in features:
        start = tunables.get("grow", {}).get("start", FEATURES["grow"].tunables["start"].default)
        count = tunables[base].get("buf_count", BASES[base]["buf_count"].default)
        if start > count:
            raise ValueError(f"{spec_text!r}: grow(start={start}) is more than the pool's ceiling "
                             f"buf_count={count} (e.g. uring(buf_count=1024)+grow)")
    if "connbuf" in features:
        clash = [f for f in ("mshot", "bundle", "inc", "zc", "grow", "huge") if f in features]
        if clash:
            raise ValueError(f"{spec_text!r}: connbuf excludes {' and '.join(clash)} "
                             "(connbuf has no provided buffers, and its next recv would overwrite a zero-copy send)")
    order = list(FEATURES)
    features.sort(key=order.index)
    kept = []
    for owner in [base] + features:
        table = BASES[base] if owner == base else FEATURES[owner].tunables
        values = tuple(sorted((k, v) for k, v in tunables.get(owner, {}).items() if v != table[k].default))
        if values:
            kept.append((owner, values))
    return Spec(base, tuple(features), tuple(kept))


def canonical(impl):
    """The canonical string of a spec; exec:CMD unchanged (after checking it is well formed)."""
    if is_exec(impl):
        parse_exec(impl)
        return impl
    return str(parse(impl))


def base_of(impl):
    """'uring', 'epoll' or 'exec' for any implementation string (malformed specs: ValueError)."""
    return "exec" if is_exec(impl) else parse(impl).base


def split_list(text):
    """Split a comma-separated list of specs, ignoring commas inside parentheses:
    'uring+batch(nr=16,wait_us=50),epoll' -> ['uring+batch(nr=16,wait_us=50)', 'epoll']."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def merge_options(spec, options):
    """Server options of a spec plus explicit ones; ValueError when an explicit option contradicts the
    spec (e.g. buf_count=64 with uring(buf_count=16), or features=... that the spec does not name)."""
    spec = parse(spec)
    mine = spec.to_server_options()
    owned = {"features"} | {t.option for f in FEATURES.values() for t in f.tunables.values()}
    resolved = {**DEFAULT_OPTIONS, **mine}
    for name, value in options.items():
        if (name in mine or name in owned) and name in resolved and value != resolved[name]:
            raise ValueError(f"server option {name}={value} conflicts with spec {spec} "
                             f"(which sets {name}={resolved[name]}); change the spec instead")
        if name in owned and name not in resolved:
            raise ValueError(f"server option {name} is set by the spec (e.g. uring+batch(nr=16)), not directly")
    return {**mine, **options}


# --------------------------------------------------------------------------- kernel support

def kernel_version(release=None):
    """(major, minor) of a kernel release string such as '6.18.44-fc'; (0, 0) if unreadable."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@functools.lru_cache(maxsize=None)
def probe():
    """What this kernel and build offer, probed once per process: kernel version, io_uring set-up
    error, IORING_FEAT_* names, supported opcode names, whether the C core has server features."""
    info = io_uring_info()
    return {"kernel": kernel_version(), "setup_error": info.get("setup_error"),
            "feat": frozenset(info.get("features") or ()), "ops": frozenset(info.get("ops_supported") or ()),
            "features_built": features_built(), "thp": thp_mode()}


THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode():
    """The transparent huge page mode ('always', 'madvise', 'never'), or None without them."""
    try:
        with open(THP_ENABLED) as f:
            m = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def _needs_kernel(version, kernel, what):
    if kernel < version:
        return f"{what} needs Linux {version[0]}.{version[1]}, this kernel is {kernel[0]}.{kernel[1]}"
    return None


def _feature_reason(name, p, spec):
    k = p["kernel"]
    if name == "mshot":
        return _needs_kernel((6, 0), k, "mshot (multishot recv)")
    if name in ("bundle", "sendring"):
        return None if "RECVSEND_BUNDLE" in p["feat"] else f"{name} needs IORING_FEAT_RECVSEND_BUNDLE (Linux 6.10)"
    if name == "inc":
        return _needs_kernel((6, 12), k, "inc (IOU_PBUF_RING_INC)")
    if name == "batch":
        return None if "EXT_ARG" in p["feat"] else "batch needs IORING_FEAT_EXT_ARG (Linux 5.11) for its wait timeout"
    if name == "pollfirst":
        return _needs_kernel((5, 19), k, "pollfirst (IORING_RECVSEND_POLL_FIRST)")
    if name == "zc":
        return None if "SEND_ZC" in p["ops"] else "zc needs IORING_OP_SEND_ZC (Linux 6.0)"
    if name == "sqpoll":
        if "SQPOLL_NONFIXED" not in p["feat"]:
            return "sqpoll needs IORING_FEAT_SQPOLL_NONFIXED (Linux 5.11)"
        cpu = spec.tunables("sqpoll").get("cpu")
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            return f"sqpoll cpu {cpu} is not available here"
        return None
    if name == "napi":
        return _needs_kernel((6, 9), k, "napi (io_uring_register_napi)")
    if name == "huge":
        thp = p.get("thp")
        if thp in ("always", "madvise"):
            return None
        return ("huge needs transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)" if thp is None else
                f"huge needs transparent huge pages, which are off here ({THP_ENABLED}: {thp})")
    return None


def unsupported_reason(spec, probed=None):
    """None if this machine can run the spec, else a short reason ("bundle needs ...").

    ``probed`` is a dict like probe()'s (default: this machine's), so a reader can ask about another
    kernel.  exec:CMD specs are always "supported" here (the command decides).
    """
    if is_exec(spec):
        return None
    spec = parse(spec)
    p = probe() if probed is None else probed
    if spec.base == "epoll":
        if spec.tunables("epoll").get("busy_poll_us"):
            return _needs_kernel((6, 9), p["kernel"], "epoll busy_poll_us (EPIOCSPARAMS)")
        return None
    if p.get("setup_error"):
        return f"io_uring is not available: {p['setup_error']}"
    if spec.features and not p.get("features_built", True):
        return "server features not built (the compiled C core predates them)"
    for name in spec.features:
        why = _feature_reason(name, p, spec)
        if why:
            return why
    return None


# --------------------------------------------------------------------------- the catalogue

#: epoll spinning before it blocks: the epoll counterpart of uring's batched wait, in the catalogue and the
#: ablation grid so that a spinning io_uring is compared with a spinning epoll too.
EPOLL_SPIN = "epoll(spin_us=50)"
#: The textbook level-triggered epoll server (EPOLLOUT watched only while a send is blocked).
EPOLL_LT = "epoll(lt=1)"


def _catalogue():
    needs = {"bundle": "uring+mshot+", "sendring": "uring+mshot+bundle+"}  # each feature with what it needs
    singles = [needs.get(name, "uring+") + name for name in FEATURES]
    out = []
    for spec in [RECOMMENDED, "uring", "epoll", EPOLL_SPIN, EPOLL_LT, "epoll(busy_poll_us=50)"] + singles + list(ABLATION_SPECS):
        canon = str(parse(spec))
        if canon not in out:
            out.append(canon)
    return out


#: Every spec `python -m echo_core impls` lists: the recommended design first, the bases, epoll spinning before it blocks, each feature alone on uring (bundle with the
#: mshot it needs), and the ablation study's combinations.
CATALOGUE = tuple(_catalogue())


def impls_lines(specs=CATALOGUE, probed=None):
    """The lines of `python -m echo_core impls`: supported specs first, then 'SPEC  unsupported: WHY'."""
    ok, bad = [], []
    for spec in specs:
        why = unsupported_reason(spec, probed)
        (bad.append(f"{spec}  unsupported: {why}") if why else ok.append(str(spec)))
    return ok + bad


def feature_table():
    """One row per base tunable and feature: name, bit, tunables (name=default range), kernel, description."""
    rows = []
    for name, feat in FEATURES.items():
        tun = ", ".join(f"{k}={'unset' if t.default is None else t.default} ({t.low}..{t.high})"
                        for k, t in feat.tunables.items())
        rows.append({"feature": name, "bit": feat.bit_name, "tunables": tun, "kernel": feat.kernel,
                     "description": feat.description})
    return rows


def supported(specs=CATALOGUE):
    """The specs (canonical) this machine can run, in the given order."""
    return [str(parse(s)) for s in specs if unsupported_reason(s) is None]


def describe(impls):
    """Per implementation (canonical spec): base, features, server options it sets, and why this machine
    cannot run it (None if it can) -- what a result set's metadata records beside its rows."""
    out = {}
    for impl in impls:
        if is_exec(impl):
            out[impl] = {"base": "exec", "features": [], "server_options": {}, "unsupported": None}
            continue
        spec = parse(impl)
        out[str(spec)] = {"base": spec.base, "features": list(spec.features),
                          "server_options": spec.to_server_options(), "unsupported": unsupported_reason(spec)}
    return out


def impls_command(args):
    for line in impls_lines():
        print(line)
    return 0


__all__ = ["ABLATION_SPECS", "BASES", "CATALOGUE", "FEATURES", "RECOMMENDED", "Spec", "canonical", "describe",
           "impls_lines", "merge_options", "parse", "split_list", "supported", "unsupported_reason"]
