"""A simulated fibre cross-connect switch served over NETCONF/SSH (see server.py)."""

from qkdtel.sims.netconf.server import Faults, NetconfSimServer
from qkdtel.sims.netconf.switch import SwitchModel, port_roles, site_switch

__all__ = ["Faults", "NetconfSimServer", "SwitchModel", "port_roles", "site_switch"]
