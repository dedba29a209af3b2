"""The science steps of joblife's reference job types, one module per processing chain.

- :mod:`joblife.science.h5repack`: rewrite an HDF5 recording so per-channel reads are fast.
- :mod:`joblife.science.pyramid`: build a chunked multi-resolution pyramid of an image stack.
- :mod:`joblife.science.snow`: a snow mask (NDSI rule) from a Sentinel-2-like tile product.
- :mod:`joblife.science.synthetic`: small, fast generators of valid inputs for each chain.

Each chain is a pure library function (raising the typed errors of
:mod:`joblife.science.outcome`) and a command line, ``python -m joblife.science.<name>``, whose
exit codes are the constants of :mod:`joblife.science.outcome`. This package needs only
numpy, h5py and Pillow (not the database stack), so science images install it alone.
"""
