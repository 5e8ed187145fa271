"""Simulators of the hardware qkdtel polls, and the simulated MadQCI network ("MadQCI twin").

`qkdtel sims up` (see `qkdtel.sims.cli`) starts the twin described by `madqci.yaml`; the SNMP
agents of the QKD modules live in `qkdtel.sims.snmp`.
"""
