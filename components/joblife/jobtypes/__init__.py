"""Job types shipped with joblife."""
