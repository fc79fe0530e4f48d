"""Folded stacks: `perf script` output -> one ``frame;frame;...;leaf count`` line per distinct stack.

A folded stack lists its frames root first (the outermost caller) and ends with the sampled function
(the leaf); ``count`` is the number of samples with exactly that stack.  Kernel frames carry the
suffix ``_[k]`` (the convention other folded-stack tools use too), so a folded file alone says which
frames ran in the kernel; :func:`split_frame` takes it off again.  Addresses and ``+0x..`` offsets are
dropped, so that samples at different instructions of one function fold together; frames perf could
not name stay ``[unknown]``.

In memory a profile is a dict ``{(frame, frame, ..., leaf): count}`` with the frames as written in
the file (kernel frames suffixed).
"""

import re
from collections import Counter

#: Suffix marking a kernel frame in folded stacks.
KERNEL_SUFFIX = "_[k]"
#: perf's pseudo-DSOs of user-space memory (anything else in brackets is the kernel or a module).
USER_PSEUDO_DSOS = {"[unknown]", "[vdso]", "[vsyscall]", "[heap]", "[stack]", "[anon]", "[jit]", "[uprobes]"}
#: Fields `perf script` is asked for: a header line per sample, then one "ip sym (dso)" line per frame.
PERF_SCRIPT_FIELDS = "comm,tid,period,ip,sym,dso"

_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+$")


def is_kernel_dso(dso):
    """True for the kernel image ([kernel.kallsyms]) and kernel modules ([name] or name.ko)."""
    if dso.startswith("[kernel.") or dso.startswith("[guest.kernel."):
        return True
    if re.search(r"\.ko(\.\w+)?$", dso):
        return True
    return dso.startswith("[") and dso.endswith("]") and dso not in USER_PSEUDO_DSOS


def parse_frame_line(line):
    """One callchain line of `perf script` ("  ffffffff81b6ccb0 _copy_to_iter+0x80 ([kernel.kallsyms])")
    -> the frame's folded name ("_copy_to_iter_[k]")."""
    text = line.strip()
    _addr, _, rest = text.partition(" ")
    rest = rest.strip()
    dso = ""
    # The DSO is the last parenthesised part; a symbol may hold parentheses itself (C++ signatures).
    if rest.endswith(")") and " (" in rest:
        rest, _, dso = rest.rpartition(" (")
        dso = dso[:-1]
    symbol = _OFFSET.sub("", rest.strip()) or "[unknown]"
    # ';' separates frames and a trailing ' N' is the count: neither may appear inside a name.
    symbol = symbol.replace(";", ":").replace(" ", "_")
    return symbol + KERNEL_SUFFIX if is_kernel_dso(dso) else symbol


def parse_perf_script(text):
    """`perf script` output (any fields, callchains on indented lines) -> {stack tuple root first: samples}.

    A sample is a header line followed by its callchain lines (leaf first), ended by a blank line.
    A sample without callchain lines (recorded without -g) counts as the one frame its header names
    only if perf printed the symbol on the header line; such samples are skipped here.
    """
    stacks = Counter()
    frames = []
    in_sample = False
    for line in text.splitlines():
        if not line.strip():
            if frames:
                stacks[tuple(reversed(frames))] += 1
            frames, in_sample = [], False
        elif line[0] in " \t":
            if in_sample:
                frames.append(parse_frame_line(line))
        else:
            if frames:  # a header right after a callchain, without the blank line between them
                stacks[tuple(reversed(frames))] += 1
            frames, in_sample = [], True
    if frames:
        stacks[tuple(reversed(frames))] += 1
    return dict(stacks)


def split_frame(frame):
    """"_copy_to_iter_[k]" -> ("_copy_to_iter", True); "ec_uring_serve" -> ("ec_uring_serve", False)."""
    if frame.endswith(KERNEL_SUFFIX):
        return frame[: -len(KERNEL_SUFFIX)], True
    return frame, False


def format_folded(stacks):
    """{stack: count} -> folded text, one line per stack, heaviest first (ties by name), newline-terminated."""
    order = sorted(stacks.items(), key=lambda item: (-item[1], item[0]))
    return "".join(f"{';'.join(stack)} {count}\n" for stack, count in order if count > 0)


def parse_folded(text):
    """Folded text -> {stack tuple: count}; lines of the same stack add up."""
    stacks = Counter()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            raise ValueError(f"line {number} is not 'frame;frame;... count': {line[:80]!r}")
        stacks[tuple(stack.split(";"))] += int(count)
    return dict(stacks)


def write_folded(stacks, path):
    with open(path, "w", encoding="utf-8") as f:
        f.write(format_folded(stacks))


def read_folded(path):
    with open(path, encoding="utf-8") as f:
        return parse_folded(f.read())


def total_samples(stacks):
    return sum(stacks.values())


def function_samples(stacks):
    """{frame: (self samples, inclusive samples)}: self counts samples whose leaf is the frame; inclusive
    counts samples with the frame anywhere on the stack, once per sample even when it recurses."""
    self_counts, inclusive = Counter(), Counter()
    for stack, count in stacks.items():
        if not stack:
            continue
        self_counts[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count
    return {frame: (self_counts.get(frame, 0), inclusive[frame]) for frame in inclusive}
