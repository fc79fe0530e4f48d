"""The machine metadata: the kernel probe must agree with what the io_uring server itself uses, and the
facts that explain differences between machines (caches, NUMA, copy flags, hypervisor, perf) must be what
this machine's /proc and /sys say -- or a reason, never an error, where they say nothing."""

import copy
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import echo_core
from conftest import IO_URING_REFUSED
from echo_core.host import machine
from echo_core.host.cpus import parse_cpu_list
from echo_core.analysis import report
from echo_core.results import resultsets


def test_io_uring_probe_reports_what_the_server_needs():
    if IO_URING_REFUSED:
        pytest.skip(IO_URING_REFUSED)
    info = echo_core.machine_info()["io_uring"]
    assert info["setup_permitted"] is True and info["setup_error"] is None
    # The io_uring server just ran in other tests with these: the probe must see them too.
    assert {"ACCEPT", "RECV", "SEND", "CLOSE", "POLL_ADD", "PROVIDE_BUFFERS"} <= set(info["ops_supported"])
    assert "FAST_POLL" in info["features"] and int(info["features_mask"], 16) > 0
    assert set(info["setup_flags_accepted"]) == {"COOP_TASKRUN", "SINGLE_ISSUER", "SINGLE_ISSUER|DEFER_TASKRUN"}


# --------------------------------------------------------------------------- facts that differ between machines

REPO = Path(__file__).resolve().parents[2]
CPU_DIR = "/sys/devices/system/cpu"


def _cpuinfo_flags():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return line.partition(":")[2].split()
    return []


def test_caches_are_read_per_level_with_their_sharing():
    if not glob.glob(f"{CPU_DIR}/cpu0/cache/index0/size"):
        pytest.skip("this kernel (or container) describes no caches in sysfs")
    info = machine.cache_info()
    assert info["reason"] is None and info["levels"]
    cpus_with_caches = {int(p.split("/")[5][3:]) for p in glob.glob(f"{CPU_DIR}/cpu[0-9]*/cache/index0")}
    own = {}  # cpu0's caches, read here independently: (level, type) -> size in bytes
    for index in glob.glob(f"{CPU_DIR}/cpu0/cache/index[0-9]*"):
        read = lambda name: Path(index, name).read_text().strip()  # noqa: E731
        own[(int(read("level")), read("type"))] = machine._size_bytes(read("size"))
    assert {(rec["level"], rec["type"]) for rec in info["levels"]} >= set(own)
    for rec in info["levels"]:
        assert rec["size_bytes"] > 0 and rec["line_bytes"] > 0 and rec["instances"] >= 1, rec
        if (rec["level"], rec["type"]) in own:
            assert rec["size_bytes"] == own[(rec["level"], rec["type"])], rec
        # every CPU is served by exactly one instance of each level
        served = [cpu for text in rec["shared_cpu_lists"] for cpu in parse_cpu_list(text)]
        assert sorted(served) == sorted(set(served)), rec
        assert rec["name"] in info["summary"]
    (l1d,) = [rec for rec in info["levels"] if rec["name"] == "L1d"]
    served = {cpu for text in l1d["shared_cpu_lists"] for cpu in parse_cpu_list(text)}
    assert served == cpus_with_caches


def test_numa_nodes_match_sysfs():
    nodes = glob.glob("/sys/devices/system/node/node[0-9]*")
    info = machine.numa_info()
    if not nodes:
        assert info["count"] is None and info["reason"]
        return
    assert info["count"] == len(nodes) and info["reason"] is None
    cpus = [c for n in info["nodes"] for c in parse_cpu_list(n["cpus"])]
    assert set(cpus) >= set(os.sched_getaffinity(0))


def test_copy_flags_and_cpu_generation_match_proc_cpuinfo():
    flags = _cpuinfo_flags()
    cpu = machine.cpu_info()
    if not flags:
        assert cpu["copy_flags"] is None
        pytest.skip("no x86 flags line in /proc/cpuinfo")
    assert cpu["copy_flags"] == {flag: flag in flags for flag in machine.COPY_FLAGS}
    assert cpu["hypervisor"] == ("hypervisor" in flags)
    assert cpu["vendor"] and cpu["family"].isdigit() and cpu["model_number"].isdigit()


def test_hypervisor_is_named_whenever_the_cpu_says_there_is_one():
    info = machine.hypervisor_info()
    flags = _cpuinfo_flags()
    assert info["cpuid_hypervisor_flag"] == (("hypervisor" in flags) if flags else None)
    if info["cpuid_hypervisor_flag"]:
        assert isinstance(info["name"], str) and info["name"] not in ("", "none")
    if shutil.which("systemd-detect-virt"):
        vm = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True).stdout.strip()
        assert info["detect_virt_vm"] == vm and info["detect_virt_reason"] is None
    else:
        assert info["detect_virt_vm"] is None and "not found" in info["detect_virt_reason"]


def test_perf_availability_is_what_the_machine_offers():
    info = machine.perf_info()
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    assert info["perf_event_paranoid"] == (int(paranoid.read_text()) if paranoid.exists() else None)
    tool = info["tool"]
    assert tool["path"] == shutil.which("perf")
    assert (tool["version"] or "").startswith("perf version") or tool["reason"]
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    mounted = [fields[1] for fields in mounts if fields[2] == "tracefs"]
    assert info["tracefs"]["mounted"] == bool(mounted) and info["tracefs"]["mount_points"] == mounted
    assert info["tracefs"]["reason"] is None if mounted else info["tracefs"]["reason"]
    assert info["event_sources"] == sorted(os.listdir("/sys/bus/event_source/devices"))
    assert info["hardware_pmu"] in (True, False, None)
    assert (info["hardware_pmu_reason"] is None) == (info["hardware_pmu"] is True)


def test_a_machine_without_these_files_gives_reasons_not_errors(tmp_path):
    missing = tmp_path / "missing"
    assert machine.cache_info(missing)["levels"] == [] and machine.cache_info(missing)["reason"]
    assert machine.numa_info(missing)["count"] is None and machine.numa_info(missing)["reason"]
    assert machine.cpu_info(missing)["copy_flags"] is None
    virt = machine.hypervisor_info(cpuinfo_path=missing, sys_hypervisor=missing, dmi_dir=missing)
    assert virt["cpuid_hypervisor_flag"] is None and virt["dmi_product"] is None
    assert machine.perf_info(missing)["event_sources"] == []
    assert set(machine.comparable_facts(None).values()) == {None}


def test_every_result_set_records_the_new_facts_as_json():
    info = json.loads(json.dumps(machine.machine_info()))
    for key in ("caches", "numa", "virtualization", "perf"):
        assert key in info, key
    assert "copy_flags" in info["cpu"]
    facts = machine.comparable_facts(info)
    assert facts["CPU model"] == info["cpu"]["model"] and facts["kernel"] == os.uname().release


def _this_machine_and_another():
    """This machine's real metadata, and a copy edited into an Intel Xeon VM under another hypervisor."""
    here = {"parameters": {"duration": 2.0, "warmup": 0.5}, "machine": machine.machine_info()}
    there = copy.deepcopy(here)
    cpu = there["machine"]["cpu"]
    cpu.update(model="Intel Xeon Processor (Icelake)", vendor="GenuineIntel", family="6", model_number="106")
    there["machine"]["caches"] = {"levels": [], "reason": None,
                                  "summary": "L1d 48K ×2 (per core), L1i 32K ×2 (per core), L2 1.25M ×2 (per core), "
                                             "L3 16M (shared by cpus 0-1)"}
    there["machine"]["virtualization"] = dict(there["machine"]["virtualization"], name="microsoft")
    return here, there


def test_pooling_sets_from_different_machines_warns_with_the_facts_that_differ():
    here, there = _this_machine_and_another()
    differences = resultsets.pooling_differences({"epyc": here, "xeon": there})
    text = "\n".join(differences)
    for label in ("CPU model differs", "CPU vendor / family / model differs", "caches differs", "hypervisor differs"):
        assert label in text, (label, differences)
    assert "L3 16M" in text and "xeon" in text and "epyc" in text
    assert not [d for d in differences if d.startswith(("kernel", "NUMA", "window"))]  # what is equal is not named
    warning = report.machine_warning({"epyc": here, "xeon": there})
    assert warning.startswith("**Warning:**") and "caches differs" in warning
    table = report.machine_table({"epyc": here, "xeon": there})
    assert table.loc["caches", "xeon"].startswith("L1d 48K")
    assert table.loc["caches", "epyc"] != table.loc["caches", "xeon"]
    assert resultsets.pooling_differences({"a": here, "b": copy.deepcopy(here)}) == []
    assert report.machine_warning({"a": here, "b": copy.deepcopy(here)}) is None


def test_a_committed_result_set_without_the_facts_is_unverifiable_not_different():
    committed = sorted((REPO / "data").glob("sweep-*.json"))
    if not committed:
        pytest.skip("no committed result set in data/")
    old = json.loads(committed[0].read_text())
    old["parameters"] = {"duration": 2.0, "warmup": 0.5}
    here, _ = _this_machine_and_another()
    differences = resultsets.pooling_differences({"old": old, "new": here})
    assert not [d for d in differences if "caches differs" in d]
    if "caches" not in old.get("machine", {}):
        assert any(d.startswith("caches not recorded in old") for d in differences), differences
        assert report.machine_table({"old": old})["old"]["caches"] == report.NOT_RECORDED
