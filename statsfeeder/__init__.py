"""statsfeeder: vCenter 20-second VM samples, tagged with vCloud Director IDs, into Cassandra."""

__version__ = "0.1.0"
