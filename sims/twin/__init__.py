"""The MadQCI twin (issue 13): one physical model (`model.TwinModel`) driving every simulator
of the reference network, its control API (`control`) and `qkdtel sims up` (`up`)."""
