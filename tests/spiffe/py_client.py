"""A SPIFFE Workload API client built on py-spiffe (PyPI `spiffe`), run by
tests/tests/spiffe.rs as a pod process. Prints one JSON object on stdout.

    py_client.py fetch AUDIENCE          fetch a JWT-SVID and the bundles, validate both ways
    py_client.py validate AUDIENCE TOKEN ValidateJWTSVID only
    py_client.py raw-fetch AUDIENCE [--no-header]  FetchJWTSVID through the generated stub
    py_client.py watch N                 the first N FetchJWTBundles messages (key counts)
"""

import json
import os
import sys

import grpc
from spiffe import JwtSvid, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.spiffe_id.spiffe_id import TrustDomain

SOCKET = os.environ["SPIFFE_ENDPOINT_SOCKET"]


def out(obj):
    print(json.dumps(obj), flush=True)


def stub():
    channel = grpc.insecure_channel(SOCKET)
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


HEADER = [("workload.spiffe.io", "true")]


def fetch(audience):
    client = WorkloadApiClient(default_timeout=30)
    svid = client.fetch_jwt_svid(audience={audience})
    bundles = client.fetch_jwt_bundles()
    td = svid.spiffe_id.trust_domain
    bundle = bundles.get_bundle_for_trust_domain(td)
    local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
    remote = client.validate_jwt_svid(svid.token, audience)
    out(
        {
            "spiffe_id": str(svid.spiffe_id),
            "token": svid.token,
            "local_spiffe_id": str(local.spiffe_id),
            "remote_spiffe_id": str(remote.spiffe_id),
            "bundle_kids": sorted(bundle.jwt_authorities.keys()),
        }
    )


def rpc_error(e):
    out({"code": e.code().name, "details": e.details()})


def validate(audience, token):
    try:
        r = stub().ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token),
            metadata=HEADER,
            timeout=30,
        )
        out({"code": "OK", "spiffe_id": r.spiffe_id, "sub": r.claims["sub"]})
    except grpc.RpcError as e:
        rpc_error(e)


def raw_fetch(audience, header):
    try:
        r = stub().FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=[audience]),
            metadata=HEADER if header else None,
            timeout=30,
        )
        out({"code": "OK", "spiffe_id": r.svids[0].spiffe_id, "token": r.svids[0].svid})
    except grpc.RpcError as e:
        rpc_error(e)


def watch(n):
    stream = stub().FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
    for i, msg in enumerate(stream):
        counts = {k: len(json.loads(v)["keys"]) for k, v in msg.bundles.items()}
        out({"message": i, "keys": counts})
        if i + 1 >= n:
            stream.cancel()
            return


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "fetch":
        fetch(sys.argv[2])
    elif cmd == "validate":
        validate(sys.argv[2], sys.argv[3])
    elif cmd == "raw-fetch":
        raw_fetch(sys.argv[2], "--no-header" not in sys.argv)
    elif cmd == "watch":
        watch(int(sys.argv[2]))
    else:
        sys.exit("unknown command " + cmd)
