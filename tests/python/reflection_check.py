"""Discovers seatbroker by server reflection alone (grpcio-reflection, the v1alpha
protocol that Python tools speak) and calls two methods it learned of: Health/Check
and AdminService/ListOrganizations. No generated stub of ours is used.

Usage: reflection_check.py --addr HOST:PORT --ca CA.pem --operator-key KEY
"""

import argparse
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

HEALTH = "grpc.health.v1.Health"
ADMIN = "seatbroker.v1.AdminService"


def dynamic_call(channel, pool, service_name, method_name, request_fields, metadata=()):
    """Calls a unary method known only from its descriptor."""
    method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return call(request_class(**request_fields), metadata=metadata, timeout=20)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--operator-key", required=True)
    args = parser.parse_args()
    with open(args.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    failures = []
    with grpc.secure_channel(args.addr, credentials) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        print("services:", sorted(services))
        for expected in (HEALTH, ADMIN, "seatbroker.v1.SessionService"):
            if expected not in services:
                failures.append(f"{expected} not discovered")
        pool = descriptor_pool.DescriptorPool(database)

        health = dynamic_call(channel, pool, HEALTH, "Check", {"service": ""})
        serving = health.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_name["SERVING"].number
        print("health:", health)
        if health.status != serving:
            failures.append(f"health is {health.status}, not SERVING")

        listed = dynamic_call(channel, pool, ADMIN, "ListOrganizations", {},
                              metadata=(("authorization", f"Bearer {args.operator_key}"),))
        print("organizations:", [org.org_id for org in listed.organizations])

        try:
            dynamic_call(channel, pool, ADMIN, "ListOrganizations", {})
            failures.append("a call without a key was answered")
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                failures.append(f"a call without a key answered {error.code()}")
    for failure in failures:
        print("FAIL", failure)
    print("reflection check:", "failed" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
