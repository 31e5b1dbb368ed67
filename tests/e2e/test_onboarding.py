"""An onboarding workflow (identity check, AML screening, human reviews, webhooks) along
every branch, against the stub, checked through the public API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook
from system_harness import Api, System
from system_stub import StubServer

from cadenza_devstack.demo_setup import onboarding_spec

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def onboarding(slug: str, subscription: str) -> dict[str, Any]:
    """The onboarding workflow of examples/onboarding.yaml, with the stub's answers driven
    by the input (the stub echoes the request body)."""
    approvers = ["role:approver"]
    return {
        "inputs": {"type": "object", "required": ["customer_id", "verdict", "aml"]},
        "on_failure": "compensate",
        "output": {"customer_id": "${trigger.customer_id}",
                   "kyc": "${step.capture_ktp.output.body.verdict}"},
        "nodes": [
            {"id": "capture_ktp", "type": "service_call", "connection": "stub",
             "method": "POST", "path": f"/{slug}/ktp",
             "headers": {"Authorization": "Bearer ${secrets.STUB_TOKEN}"},
             "body": {"customer": "${trigger.customer_id}", "verdict": "${trigger.verdict}"},
             "retry": {"max_attempts": 3, "initial_interval": "200ms",
                       "non_retryable": ["http_4xx"]},
             "compensation": {"connection": "stub", "method": "DELETE",
                              "path": f"/{slug}/ktp/${{trigger.customer_id}}"}},
            {"id": "route_kyc", "type": "decision", "depends_on": ["capture_ktp"],
             "cases": [
                 {"when": 'step.capture_ktp.output.body.verdict == "passed"',
                  "next": ["aml_screening"]},
                 {"when": 'step.capture_ktp.output.body.verdict == "requires_review"',
                  "next": ["kyc_review"]}],
             "default": ["reject_customer"]},
            {"id": "kyc_review", "type": "human_approval", "depends_on": ["route_kyc"],
             "approvers": approvers, "four_eyes": True, "expires_in": "2d",
             "instructions": "Check the KTP of ${trigger.customer_id} by hand."},
            {"id": "review_gate", "type": "decision", "depends_on": ["kyc_review"],
             "cases": [{"when": 'step.kyc_review.output.decision == "approved"',
                        "next": ["aml_screening"]}],
             "default": ["reject_customer"]},
            {"id": "aml_screening", "type": "service_call", "connection": "stub",
             "depends_on": ["route_kyc", "review_gate"], "join": "any", "method": "POST",
             "path": f"/{slug}/aml", "body": {"result": "${trigger.aml}"},
             "retry": {"max_attempts": 5, "initial_interval": "200ms"}},
            {"id": "route_aml", "type": "decision", "depends_on": ["aml_screening"],
             "cases": [{"when": 'step.aml_screening.output.body.result == "confirmed_hit"',
                        "next": ["mlro_approval"]}],
             "default": ["onboarded_webhook"]},
            {"id": "mlro_approval", "type": "human_approval", "depends_on": ["route_aml"],
             "approvers": approvers, "four_eyes": True, "on_reject": "fail",
             "instructions": "AML screening found a confirmed hit."},
            {"id": "onboarded_webhook", "type": "webhook_emit",
             "depends_on": ["route_aml", "mlro_approval"], "join": "any",
             "subscription": subscription, "event": "customer.onboarded",
             "payload": {"customer_id": "${trigger.customer_id}",
                         "screening": "${step.aml_screening.output.body.result}"}},
            {"id": "reject_customer", "type": "webhook_emit",
             "depends_on": ["route_kyc", "review_gate"], "join": "any",
             "subscription": subscription, "event": "customer.rejected",
             "payload": {"customer_id": "${trigger.customer_id}",
                         "verdict": "${step.capture_ktp.output.body.verdict}"}},
        ],
    }


# branch: (input verdict, AML result, decisions to take in order, expected status, steps)
S, K = "succeeded", "skipped"
BRANCHES: dict[str, tuple[str, str, list[tuple[str, str]], str, dict[str, str]]] = {
    "clear": ("passed", "clear", [], "succeeded", {
        "capture_ktp": S, "route_kyc": S, "kyc_review": K, "review_gate": K,
        "aml_screening": S, "route_aml": S, "mlro_approval": K, "onboarded_webhook": S,
        "reject_customer": K}),
    "hit_approved": ("passed", "confirmed_hit", [("mlro_approval", "approve")], "succeeded", {
        "capture_ktp": S, "route_kyc": S, "kyc_review": K, "review_gate": K,
        "aml_screening": S, "route_aml": S, "mlro_approval": S, "onboarded_webhook": S,
        "reject_customer": K}),
    "hit_rejected": ("passed", "confirmed_hit", [("mlro_approval", "reject")], "failed", {
        "capture_ktp": "compensated", "route_kyc": S, "kyc_review": K, "review_gate": K,
        "aml_screening": S, "route_aml": S, "mlro_approval": "failed",
        "onboarded_webhook": K, "reject_customer": K}),
    "review_approved": ("requires_review", "clear", [("kyc_review", "approve")], "succeeded", {
        "capture_ktp": S, "route_kyc": S, "kyc_review": S, "review_gate": S,
        "aml_screening": S, "route_aml": S, "mlro_approval": K, "onboarded_webhook": S,
        "reject_customer": K}),
    "review_rejected": ("requires_review", "clear", [("kyc_review", "reject")], "succeeded", {
        "capture_ktp": S, "route_kyc": S, "kyc_review": S, "review_gate": S,
        "aml_screening": K, "route_aml": K, "mlro_approval": K, "onboarded_webhook": K,
        "reject_customer": S}),
    "kyc_failed": ("failed", "clear", [], "succeeded", {
        "capture_ktp": S, "route_kyc": S, "kyc_review": K, "review_gate": K,
        "aml_screening": K, "route_aml": K, "mlro_approval": K, "onboarded_webhook": K,
        "reject_customer": S}),
}


def decide(system: System, approver: Api, execution_id: str, node: str, decision: str) -> None:
    system.wait_for_task(approver, execution_id, node)
    approver.call("POST", f"/api/executions/{execution_id}/approve",
                  json={"stepId": node, "decision": decision, "comment": f"{decision}d"})


def test_onboarding_runs_along_every_branch(system: System, stub: StubServer) -> None:
    slug = f"onboarding-{uuid.uuid4().hex[:6]}"
    hook = system.api.call("POST", "/api/webhooks", json={
        "name": f"customer-events-{slug}", "url": f"{stub.url}/{slug}/hooks",
        "eventTypes": ["customer.onboarded", "customer.rejected"], "allowPrivateNetwork": True})
    system.api.workflow(slug, onboarding(slug, f"customer-events-{slug}"))
    approver_id, approver_key = system.key("approver")
    approver = system.api_as(approver_key)

    started = {
        branch: system.api.execute(slug, {"customer_id": branch, "verdict": verdict,
                                          "aml": aml})["executionId"]
        for branch, (verdict, aml, _, _, _) in BRANCHES.items()
    }
    for branch, (_, _, decisions, _, _) in BRANCHES.items():
        for node, decision in decisions:
            decide(system, approver, started[branch], node, decision)
    done = {branch: system.api.wait_finished(xid) for branch, xid in started.items()}

    for branch, (_, _, _, status, steps) in BRANCHES.items():
        execution = done[branch]
        assert execution["status"] == status, (branch, execution)
        seen = {s["nodeId"]: s["status"] for s in execution["steps"]
                if not s["nodeId"].startswith("compensate:")}
        assert seen == steps, branch
    assert done["clear"]["output"] == {"customer_id": "clear", "kyc": "passed"}
    assert done["hit_rejected"]["error"]["failed_node"] == "mlro_approval"
    assert done["hit_rejected"]["error"]["compensated"] is True
    review = {s["nodeId"]: s for s in done["review_approved"]["steps"]}["kyc_review"]
    assert review["output"]["decision"] == "approved"
    assert review["output"]["approvers"] == [approver_id]
    check_stub_calls(stub, slug, hook["secret"], started)
    check_audit(system, started)


def check_stub_calls(stub: StubServer, slug: str, secret: str, started: dict[str, str]) -> None:
    ktp = stub.recorder.matching(f"/{slug}/ktp")
    captures = [c for c in ktp if c.method == "POST"]
    assert len(captures) == len(started)
    assert {c.headers["authorization"] for c in captures} == {"Bearer s3cret-stub-token"}
    undone = [c for c in ktp if c.method == "DELETE"]
    assert [c.path for c in undone] == [f"/{slug}/ktp/hit_rejected"]
    hooks = stub.recorder.matching(f"/{slug}/hooks")
    delivered = {}
    for call in hooks:
        payload = Webhook(secret).verify(call.raw, call.headers)
        delivered[payload["customer_id"]] = (call.idempotency_key, payload)
    assert delivered == {
        "clear": (f"{started['clear']}:onboarded_webhook",
                  {"customer_id": "clear", "screening": "clear"}),
        "hit_approved": (f"{started['hit_approved']}:onboarded_webhook",
                         {"customer_id": "hit_approved", "screening": "confirmed_hit"}),
        "review_approved": (f"{started['review_approved']}:onboarded_webhook",
                            {"customer_id": "review_approved", "screening": "clear"}),
        "review_rejected": (f"{started['review_rejected']}:reject_customer",
                            {"customer_id": "review_rejected", "verdict": "requires_review"}),
        "kyc_failed": (f"{started['kyc_failed']}:reject_customer",
                       {"customer_id": "kyc_failed", "verdict": "failed"}),
    }


def check_audit(system: System, started: dict[str, str]) -> None:
    rows = system.api.audit_log(action="approval.decided")
    decided = {r["resourceId"] for r in rows if r["executionId"] in started.values()}
    assert decided == {
        f"{started['hit_approved']}/mlro_approval", f"{started['hit_rejected']}/mlro_approval",
        f"{started['review_approved']}/kyc_review", f"{started['review_rejected']}/kyc_review",
    }
    for xid in started.values():
        history = system.api.audit_log(resourceId=xid)
        assert [r["action"] for r in history].count("execution.started") == 1


# the demo service answers from the input: the NIK's last digit decides the identity
# verdict (7 review, 8 rejected), a watchlist name is a confirmed AML hit
DEMO_INPUTS: dict[str, tuple[str, str]] = {
    "clear": ("3171234567890001", "Siti Rahma"),
    "hit_approved": ("3171234567890002", "Dewi Sanksi"),
    "hit_rejected": ("3171234567890003", "Budi Pencuci"),
    "review_approved": ("3171234567890007", "Andi Wijaya"),
    "review_rejected": ("3171234567890017", "Rina Putri"),
    "kyc_failed": ("3171234567890008", "Joko Susilo"),
}


def test_the_example_onboarding_workflow_runs_every_branch_against_the_demo_service(
    system: System, demo_url: str
) -> None:
    spec = onboarding_spec()
    slug = spec["slug"]
    for name in ("kyc-provider", "aml-screening"):
        system.connection(name, base_url=demo_url)
    system.api.call("POST", "/api/workflows", json={"slug": slug, "name": spec["name"],
                                                    "spec": spec})
    system.api.call("POST", f"/api/workflows/{slug}/publish")
    approver = system.api_as(system.key("approver")[1])

    started = {
        branch: system.api.execute(slug, {"customer_id": f"c-{branch}", "ktp_number": nik,
                                          "full_name": name})["executionId"]
        for branch, (nik, name) in DEMO_INPUTS.items()
    }
    for branch, (_, _, decisions, _, _) in BRANCHES.items():
        for node, decision in decisions:
            decide(system, approver, started[branch], node, decision)
    done = {branch: system.api.wait_finished(xid) for branch, xid in started.items()}

    for branch, (_, _, _, status, steps) in BRANCHES.items():
        assert done[branch]["status"] == status, (branch, done[branch])
        seen = {s["nodeId"]: s["status"] for s in done[branch]["steps"]
                if not s["nodeId"].startswith("compensate:")}
        assert seen == steps, branch
    assert done["clear"]["output"] == {"customer_id": "c-clear", "kyc": "passed"}
    assert done["kyc_failed"]["output"] == {"customer_id": "c-kyc_failed", "kyc": "rejected"}
    events = httpx.get(f"{demo_url}/events", params={"channel": "customer-events"}).json()
    delivered = {orjson.loads(e["body"])["customer_id"]: orjson.loads(e["body"])
                 for e in events}
    assert {c: d.get("screening", d.get("verdict")) for c, d in delivered.items()
            if c.startswith("c-")} == {
        "c-clear": "clear", "c-hit_approved": "confirmed_hit", "c-review_approved": "clear",
        "c-review_rejected": "requires_review", "c-kyc_failed": "rejected",
    }
