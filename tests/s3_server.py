"""moto's standalone S3 server on localhost, for tests and benchmarks, with
credentials checked like real S3 (moto's IAM authentication)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ray_cluster import free_port

MOTO = str(Path(sys.executable).with_name("moto_server"))
BUCKET = "abgraph"
ALLOW_ALL = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def start_s3_server(check_credentials: bool = True):
    """Start the server; return (process, the environment variables a client needs)."""
    port = free_port()
    server_env = dict(os.environ, MOTO_PORT=str(port))
    if check_credentials:
        server_env["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"  # our user, policy, attachment, key
    server = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], env=server_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
    import boto3
    anonymous = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
    environment = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    if check_credentials:
        iam = boto3.client("iam", **anonymous)
        iam.create_user(UserName="abgraph")
        policy = iam.create_policy(PolicyName="all", PolicyDocument=ALLOW_ALL)["Policy"]["Arn"]
        iam.attach_user_policy(UserName="abgraph", PolicyArn=policy)
        key = iam.create_access_key(UserName="abgraph")["AccessKey"]
        environment.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
    else:
        environment.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    return server, environment
