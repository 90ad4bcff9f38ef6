"""The README walkthrough, by a client no one here wrote: Python grpcio with stubs
generated from proto/ at run time, over TLS.

Usage: walkthrough.py --addr HOST:PORT --ca CA.pem --proto-dir proto --operator-key KEY
Exits 0 when every step did what the README says; prints one line per step.
"""

import argparse
import importlib
import queue
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    """Compiles seatbroker.proto into out_dir and imports the modules."""
    source = "seatbroker/v1/seatbroker.proto"
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        source,
    ])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)
    messages = importlib.import_module("seatbroker.v1.seatbroker_pb2")
    services = importlib.import_module("seatbroker.v1.seatbroker_pb2_grpc")
    return messages, services


def bearer(key):
    return (("authorization", f"Bearer {key}"),)


class Steps:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, condition, detail=""):
        if condition:
            self.passed += 1
            print(f"ok   {name}")
        else:
            self.failed += 1
            print(f"FAIL {name} {detail}")


def walkthrough(pb, rpc, channel, operator_key, steps):
    admin = rpc.AdminServiceStub(channel)
    session = rpc.SessionServiceStub(channel)
    operator = bearer(operator_key)

    org = admin.CreateOrganization(pb.CreateOrganizationRequest(
        org_id="pyco", display_name="Python Co", owner_email="owner@py.test",
        quota=pb.Quota(kse_seats=2, kre_sessions=1)), metadata=operator)
    steps.check("create organization", org.organization.org_id == "pyco")

    for email in ("alice@py.test", "bob@py.test"):
        member = admin.AddMember(pb.AddMemberRequest(org_id="pyco", email=email), metadata=operator)
        steps.check(f"add member {email}", member.member.role == pb.ROLE_MEMBER)

    owner_key = admin.CreateApiKey(pb.CreateApiKeyRequest(
        org_id="pyco", email="owner@py.test", label="owner"), metadata=operator).secret
    owner = bearer(owner_key)
    alice_key = admin.CreateApiKey(pb.CreateApiKeyRequest(
        org_id="pyco", email="alice@py.test", label="ci-runner"), metadata=owner).secret
    steps.check("create API keys", owner_key.startswith("sbk_") and alice_key.startswith("sbk_"))

    seats = admin.AssignLicenses(pb.AssignLicensesRequest(
        org_id="pyco", product=pb.PRODUCT_KSE, emails=["alice@py.test", "bob@py.test"]), metadata=owner)
    steps.check("assign KSE to two emails", seats.assigned_total == 2)
    floating = admin.AssignLicenses(pb.AssignLicensesRequest(
        org_id="pyco", product=pb.PRODUCT_KRE, emails=["alice@py.test"]), metadata=owner)
    steps.check("assign KRE", floating.assigned_total == 1)

    alice = bearer(alice_key)
    granted = session.Acquire(pb.AcquireRequest(
        product=pb.PRODUCT_KRE, engine_id="runner-1", hostname="ci-7"), metadata=alice)
    lease = granted.lease
    steps.check("acquire a KRE session", lease.lease_id.startswith("ls_") and lease.generation > 0)

    beat = session.Heartbeat(pb.HeartbeatRequest(
        lease_id=lease.lease_id, generation=lease.generation), metadata=alice)
    steps.check("heartbeat", beat.expires_at_unix_ms > 0 and beat.ttl_ms == lease.ttl_ms)

    try:
        session.Acquire(pb.AcquireRequest(product=pb.PRODUCT_KRE, engine_id="runner-2"), metadata=alice)
        steps.check("a second KRE session is refused", False, "it was granted")
    except grpc.RpcError as error:
        steps.check("a second KRE session is refused",
                    error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, str(error.code()))

    usage = admin.GetUsage(pb.GetUsageRequest(org_id="pyco", window_seconds=900), metadata=owner)
    kre = next(p for p in usage.products if p.product == pb.PRODUCT_KRE)
    steps.check("usage while running", (kre.quota, kre.active_sessions, kre.window_peak_sessions,
                                        kre.window_denials) == (1, 1, 1, 1), str(kre))

    session.Release(pb.ReleaseRequest(lease_id=lease.lease_id, generation=lease.generation), metadata=alice)
    usage = admin.GetUsage(pb.GetUsageRequest(org_id="pyco"), metadata=owner)
    kre = next(p for p in usage.products if p.product == pb.PRODUCT_KRE)
    kse = next(p for p in usage.products if p.product == pb.PRODUCT_KSE)
    steps.check("usage after release", (kre.active_sessions, kre.peak_sessions, kse.assigned) == (0, 1, 2),
                str(usage))

    events = admin.ListAuditEvents(pb.ListAuditEventsRequest(org_id="pyco"), metadata=owner).events
    kinds = [event.kind for event in events]
    steps.check("audit record", "lease_granted" in kinds and "lease_released" in kinds, str(kinds))
    session_channel(pb, session, admin, alice, owner, steps)


class Stream:
    """One SessionService.Channel stream: batches of operations out, events in."""

    def __init__(self, pb, session, metadata):
        self.pb = pb
        self.outgoing = queue.Queue()
        self.events = []
        self.responses = session.Channel(iter(self.outgoing.get, None), metadata=metadata, timeout=60)

    def send(self, *operations):
        self.outgoing.put(self.pb.ChannelRequest(operations=list(operations)))

    def next(self):
        while not self.events:
            self.events.extend(next(self.responses).events)
        return self.events.pop(0)

    def close(self):
        self.outgoing.put(None)
        return list(self.responses)


def session_channel(pb, session, admin, alice, owner, steps):
    """The session stream as the README's protocol section describes it."""
    stream = Stream(pb, session, alice)
    acquire = lambda request_id, engine, wait_ms=0: pb.StreamOperation(acquire=pb.StreamAcquire(
        request_id=request_id, product=pb.PRODUCT_KRE, engine_id=engine, hostname="ci-7", wait_ms=wait_ms))
    stream.send(acquire(1, "py-stream-1"))
    event = stream.next()
    steps.check("stream: granted", event.WhichOneof("event") == "granted" and event.granted.request_id == 1,
                str(event))
    lease = event.granted.lease
    stream.send(pb.StreamOperation(renew=pb.StreamRenew()))
    event = stream.next()
    steps.check("stream: one renew for every lease", event.renewed.lease_count == 1, str(event))

    admin.TerminateSession(pb.TerminateSessionRequest(org_id="pyco", lease_id=lease.lease_id), metadata=owner)
    event = stream.next()
    steps.check("stream: termination pushed",
                event.ended.lease_id == lease.lease_id and event.ended.reason == pb.END_REASON_TERMINATED,
                str(event))

    stream.send(acquire(2, "py-stream-2"))
    second = stream.next().granted.lease
    try:
        session.Acquire(pb.AcquireRequest(product=pb.PRODUCT_KRE, engine_id="runner-3", wait_ms=300),
                        metadata=alice)
        steps.check("unary long poll runs out of time", False, "it was granted")
    except grpc.RpcError as error:
        steps.check("unary long poll runs out of time",
                    error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, str(error.code()))

    stream.send(acquire(3, "py-stream-3", wait_ms=60000))
    event = stream.next()
    steps.check("stream: queued at the head", (event.queued.request_id, event.queued.position) == (3, 1),
                str(event))
    stream.send(pb.StreamOperation(release=pb.StreamRelease(lease_id=second.lease_id,
                                                            generation=second.generation)))
    seen = {stream.next().WhichOneof("event") for _ in range(2)}
    steps.check("stream: the freed seat goes to the waiter", seen == {"ended", "granted"}, str(seen))
    steps.check("stream: ends cleanly", stream.close() == [])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--proto-dir", required=True)
    parser.add_argument("--operator-key", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        pb, rpc = generate_stubs(args.proto_dir, out_dir)
        with open(args.ca, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        steps = Steps()
        with grpc.secure_channel(args.addr, credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            walkthrough(pb, rpc, channel, args.operator_key, steps)
    print(f"{steps.passed} passed, {steps.failed} failed")
    return 1 if steps.failed else 0


if __name__ == "__main__":
    sys.exit(main())
