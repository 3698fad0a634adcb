"""Pose templates per view code (docs/rules.md §2a): a mannequin rendered as OpenPose, depth and line images."""
