"""LightningModules' shared pieces, the baselines' modules and checkpoint loading."""
