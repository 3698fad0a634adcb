"""The generate stage (docs/rules.md §2b): candidate images per view code from the pose templates, the
workspace's model and ControlNets; the user picks one per view into the set's folder (`charfw pick`).

Modules: views (which views, their prompts, control images and file names: no torch), keying (the plain
background keyed out into alpha), render (the diffusers ControlNet pipelines), pick (candidates into sets).
"""
