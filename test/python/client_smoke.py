"""Calls the token service from Python through a client generated from proto/.

Issues a token, introspects it, revokes it, introspects it again and lists
it, then prints what it saw as one JSON object on stdout. Never prints a
token: only ids, display hints and claims.

Generate the client first (scripts/gen-python.sh DIR) and put DIR on
PYTHONPATH. Configuration, from the environment:

  TOKEN_SERVICE_ADDR     host:port of the gRPC port (or of the HTTP port,
                         which speaks gRPC too)
  TOKEN_SERVICE_TOKEN    the caller's token; needs tokens.create,
                         tokens.introspect, tokens.revoke and tokens.read
                         (an admin token has them all)
  TOKEN_SERVICE_CA       optional: PEM file of the CA to trust; turns on TLS
  TOKEN_SERVICE_CLIENT_CERT, TOKEN_SERVICE_CLIENT_KEY
                         optional: PEM client certificate and key, for
                         mutual TLS
"""

import json
import os
import sys

import grpc
from google.protobuf import duration_pb2, json_format

from tokens.v1 import token_service_pb2 as pb
from tokens.v1 import token_service_pb2_grpc as pb_grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def channel(addr):
    """A cleartext channel, or TLS (with a client certificate for mutual TLS) when a CA is given."""
    ca = os.environ.get("TOKEN_SERVICE_CA")
    if not ca:
        return grpc.insecure_channel(addr)
    cert = os.environ.get("TOKEN_SERVICE_CLIENT_CERT")
    key = os.environ.get("TOKEN_SERVICE_CLIENT_KEY")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    return grpc.secure_channel(addr, credentials)


def as_dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def main():
    addr = os.environ["TOKEN_SERVICE_ADDR"]
    caller = os.environ["TOKEN_SERVICE_TOKEN"]
    # Every call carries the caller's bearer token, TLS or not.
    metadata = [("authorization", "Bearer " + caller)]
    subject = os.environ.get("TOKEN_SERVICE_SUBJECT", "python@example.com")

    with channel(addr) as ch:
        stub = pb_grpc.TokenServiceStub(ch)
        issued = stub.IssueToken(
            pb.IssueTokenRequest(
                name="python-smoke",
                subject=subject,
                scopes=["orders.read"],
                teams=["python"],
                ttl=duration_pb2.Duration(seconds=3600),
                metadata={"client": "python"},
            ),
            metadata=metadata,
            timeout=10,
        )
        token = issued.token
        before = stub.IntrospectToken(pb.IntrospectTokenRequest(token=token), metadata=metadata, timeout=10)
        revoked = stub.RevokeToken(pb.RevokeTokenRequest(token=token, reason="python smoke test"), metadata=metadata, timeout=10)
        after = stub.IntrospectToken(pb.IntrospectTokenRequest(token=token), metadata=metadata, timeout=10)
        listed = stub.ListTokens(
            pb.ListTokensRequest(subject=subject, include_revoked=True, page_size=50), metadata=metadata, timeout=10
        )

    result = {
        "issued": as_dict(issued.info),
        "token_prefix": token.split("-", 1)[0] + "-",
        "introspected": as_dict(before),
        "revoked": as_dict(revoked),
        "introspected_after_revoke": as_dict(after),
        "listed": [as_dict(t) for t in listed.tokens],
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    if token in text:
        sys.exit("refusing to print output that contains the token")
    print(text)


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as error:
        sys.exit("rpc failed: %s: %s" % (error.code().name, error.details()))
