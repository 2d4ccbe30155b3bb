"""A generic gRPC client that knows nothing of Bootfleet's schema.

It learns everything through server reflection (grpcio-reflection's
descriptor database, which speaks grpc.reflection.v1alpha): lists the
services, builds the Evaluate request type from the fetched descriptors,
calls it, and prints the answer as JSON. Used by crates/bootfleet/tests/cli.rs.

usage: generic_grpc_client.py HOST:PORT MAC
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    address, mac = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("bootfleet.v1.RulesService")
        method = service.methods_by_name["Evaluate"]
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict({"facts": {"mac": mac, "arch": "bios"}, "dryRun": True}, request_type())
        call = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response = call(request, timeout=10)
        print(
            json.dumps(
                {
                    "services": services,
                    "methods": sorted(service.methods_by_name),
                    "evaluate": json_format.MessageToDict(response),
                }
            )
        )


if __name__ == "__main__":
    main()
