"""joblife-ndvi: a partner's job type, the worked example of joblife's partner guide."""
