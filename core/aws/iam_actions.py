"""The IAM actions the flow's credentials need: every AWS call the control plane in core/aws/ makes.

IAM names differ from API names in places: SendMessageBatch is sqs:SendMessage, HeadBucket and
ListObjectsV2 are s3:ListBucket, creating a resource with tags also needs the service's tagging
action, and handing a role to Spot Fleet or to an ECS task is iam:PassRole.
deployments/aws/iam/flow-user-policy.json grants exactly these (tests/test_iam_policy.py checks it).
"""

from __future__ import annotations

REQUIRED_IAM_ACTIONS: frozenset[str] = frozenset(
    {
        # core/aws/sqs.py (and sqs_send.py through it)
        "sqs:GetQueueUrl",
        "sqs:CreateQueue",
        "sqs:SetQueueAttributes",
        "sqs:TagQueue",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
        "sqs:ReceiveMessage",
        "sqs:DeleteQueue",
        "sqs:ListQueues",
        "sqs:ListQueueTags",
        # core/aws/s3.py
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        # core/aws/ecs.py
        "ecs:CreateCluster",
        "ecs:DescribeClusters",
        "ecs:DeleteCluster",
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "ecs:ListTaskDefinitions",
        "ecs:DeregisterTaskDefinition",
        "ecs:CreateService",
        "ecs:DescribeServices",
        "ecs:UpdateService",
        "ecs:DeleteService",
        "ecs:ListContainerInstances",
        "ecs:DescribeContainerInstances",
        "ecs:DeregisterContainerInstance",
        "ecs:TagResource",
        # core/aws/logs.py
        "logs:CreateLogGroup",
        "logs:DescribeLogGroups",
        "logs:PutRetentionPolicy",
        "logs:CreateExportTask",
        "logs:DescribeExportTasks",
        "logs:DeleteLogGroup",
        "logs:TagResource",
        # core/aws/ec2.py
        "ec2:CreateLaunchTemplate",
        "ec2:CreateLaunchTemplateVersion",
        "ec2:DescribeLaunchTemplates",
        "ec2:DeleteLaunchTemplate",
        "ec2:DescribeInstanceTypes",
        "ec2:RequestSpotFleet",
        "ec2:DescribeSpotFleetRequests",
        "ec2:DescribeSpotFleetInstances",
        "ec2:DescribeSpotFleetRequestHistory",
        "ec2:ModifySpotFleetRequest",
        "ec2:CancelSpotFleetRequests",
        "ec2:CreateTags",
        "ssm:GetParameter",
        # the Spot Fleet role (RequestSpotFleet) and the workers' task role (RegisterTaskDefinition)
        "iam:PassRole",
    }
)
