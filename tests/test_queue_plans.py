"""What the Bluesky queue server reads from the profile's plans, and what it refuses at submission.

The namespace is the profile's (its plans and the virtual DNPU) as the queue server's worker
builds it; the plan descriptions, the allowed lists and the check of a submitted item are the
queue server's own functions (what ``start-re-manager`` runs when an environment opens and
when a client adds an item). ``tests/test_queue_server.py`` does the same through a running
RE Manager.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("bluesky_queueserver")
from bluesky_queueserver import clear_re_worker_active, set_re_worker_active
from bluesky_queueserver.manager.profile_ops import (
    existing_plans_and_devices_from_nspace,
    load_allowed_plans_and_devices,
    validate_plan,
)

import dnpu_bluesky.plans
from dnpu_bluesky.devices import build_dnpu
from dnpu_bluesky.plans.queue import NOT_FOR_THE_QUEUE
from dnpu_bluesky.session import annotate_plans_for_queue_server

STARTUP = Path(__file__).resolve().parents[1] / "profiles" / "profile_dnpu" / "startup"


@pytest.fixture(scope="module")
def worker():
    """The worker's plans and devices, and what the profile's permissions allow its clients."""
    from bluesky.plans import count, scan

    dnpu = build_dnpu()
    namespace = {"dnpu": dnpu, "count": count, "scan": scan}
    package = dnpu_bluesky.plans
    namespace.update({name: getattr(package, name) for name in package.__all__})
    set_re_worker_active()
    try:
        annotate_plans_for_queue_server(namespace)
    finally:
        clear_re_worker_active()
    plans, devices, _, _ = existing_plans_and_devices_from_nspace(nspace=namespace)
    allowed_plans, allowed_devices = load_allowed_plans_and_devices(
        path_user_group_permissions=str(STARTUP / "user_group_permissions.yaml"),
        existing_plans=plans,
        existing_devices=devices,
    )
    yield plans, allowed_plans["primary"], allowed_devices["primary"]
    dnpu.backend.close()


def _submit(worker, name: str, *args, **kwargs) -> tuple[bool, str]:
    _, plans, devices = worker
    item = {"name": name, "args": list(args), "kwargs": kwargs, "item_type": "plan"}
    return validate_plan(item, allowed_plans=plans, allowed_devices=devices)


def test_every_parameter_of_every_plan_has_the_description_clients_show(worker):
    existing, allowed, _ = worker
    public = [name for name in dnpu_bluesky.plans.__all__ if name in existing]
    assert {"train", "train_gate", "train_sphere", "hge_gradient"} <= set(public)
    for name in public:
        description = existing[name]
        assert description.get("description"), name
        missing = [p["name"] for p in description["parameters"] if not p.get("description")]
        assert not missing, f"{name}: no description for {missing}"
    gate = {p["name"]: p for p in allowed["train_gate"]["parameters"]}["gate"]
    assert gate["description"].startswith("The gate:")
    assert gate["annotation"]["enums"] == {"Gate": ["AND", "OR", "NAND", "NOR", "XOR", "XNOR"]}


def test_plans_taking_objects_are_not_offered_and_standard_plans_are(worker):
    existing, allowed, _ = worker
    assert set(NOT_FOR_THE_QUEUE) <= set(existing)
    assert not set(NOT_FOR_THE_QUEUE) & set(allowed)
    assert {"count", "scan", "train_gate", "train_sphere", "hge_gradient", "iv_sweep"} <= set(
        allowed
    )
    ok, message = _submit(worker, "train", "dnpu", "XOR")
    assert not ok and "Plan 'train' is not in the list of allowed plans" in message


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "refusal"),
    [
        ("train_gate", ["dnpu", "XORR"], {}, "'AND', 'OR', 'NAND', 'NOR', 'XOR' or 'XNOR'"),
        ("train_gate", ["dnpu", "xor"], {}, "'XOR'"),
        ("train_gate", ["nodevice", "XOR"], {}, "'dnpu'"),
        ("train_gate", [["dnpu", "nodevice"], "XOR"], {}, "'dnpu'"),
        ("train_gate", ["dnpu.e2", "XOR"], {}, "'dnpu'"),
        ("train_gate", ["dnpu", "XOR"], {"max_iterations": "ten"}, "max_iterations"),
        ("train_sphere", [5], {}, "'dnpu'"),
        ("train_boolean_gates", ["dnpu", ["XOR", "BAD"]], {}, "'XNOR'"),
        ("hge_gradient", ["dnpu.amplifier"], {}, "'dnpu'"),
        ("iv_sweep", ["dnpu", "dnpu.mode", -0.1, 0.1], {}, "'dnpu.e2'"),
        ("iv_sweep", ["dnpu", "e2", -0.1, 0.1], {}, "'dnpu.e2'"),
    ],
)
def test_a_queue_item_with_a_wrong_name_is_refused_at_submission(
    worker, name, args, kwargs, refusal
):
    ok, message = _submit(worker, name, *args, **kwargs)
    assert not ok
    assert message.startswith("Plan validation failed:") and refusal in message, message


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("train_gate", ["dnpu", "XOR"], {"method": "spsa", "inputs": "e3,e4"}),
        ("train_gate", [["dnpu"], "NAND"], {}),
        ("train_sphere", ["dnpu"], {"input_range_v": [-0.5, 0.2]}),
        ("train_boolean_gates", ["dnpu", ["XOR", "AND"]], {"max_iterations": 5}),
        ("train_boolean_gates", ["dnpu", "XOR"], {}),
        ("hge_gradient", ["dnpu"], {"repeats": 2}),
        ("iv_sweep", ["dnpu", "dnpu.e2", -0.1, 0.1, 3], {}),
        ("count", [["dnpu"]], {"num": 2}),
        ("scan", [["dnpu"], "dnpu.e0.setpoint", -0.1, 0.1, 3], {}),
    ],
)
def test_a_queue_item_of_plain_values_is_accepted(worker, name, args, kwargs):
    ok, message = _submit(worker, name, *args, **kwargs)
    assert ok, message


def test_outside_the_queue_server_the_plans_stay_as_they_are():
    namespace = {name: getattr(dnpu_bluesky.plans, name) for name in dnpu_bluesky.plans.__all__}
    annotate_plans_for_queue_server(namespace)
    assert all(namespace[name] is getattr(dnpu_bluesky.plans, name) for name in namespace)
