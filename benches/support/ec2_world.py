"""Makes the world the economy report runs in, in a moto EC2 server, and prints it as JSON.

Run with the virtualenv's python (moto[server] brings boto3):

    python ec2_world.py http://127.0.0.1:PORT [instance-type]

Creates a /16 VPC and a /16 subnet (moto spins forever when a subnet runs out), a security
group, and one running instance (m5.large unless told), then prints
{"vpc_id", "subnet_id", "security_group", "instance_id", "instance_type", "primary_eni_id"}.
Credentials and region come from the environment (the harness sets dummy ones).
"""

import json
import sys

import boto3


def main():
    endpoint = sys.argv[1]
    instance_type = sys.argv[2] if len(sys.argv) > 2 else "m5.large"
    ec2 = boto3.client("ec2", endpoint_url=endpoint)
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/16")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="enipool-economy", Description="economy report", VpcId=vpc_id)
    run = ec2.run_instances(
        ImageId="ami-12345678",
        InstanceType=instance_type,
        SubnetId=subnet_id,
        SecurityGroupIds=[group["GroupId"]],
        MinCount=1,
        MaxCount=1,
    )
    instance = run["Instances"][0]
    primary = next(n for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
    print(
        json.dumps(
            {
                "vpc_id": vpc_id,
                "subnet_id": subnet_id,
                "security_group": group["GroupId"],
                "instance_id": instance["InstanceId"],
                "instance_type": instance_type,
                "primary_eni_id": primary["NetworkInterfaceId"],
            }
        )
    )


if __name__ == "__main__":
    main()
