"""Converters from source datasets to HDF5 v1 crop files (one module per dataset)."""
