"""``hidra-ng write``: streams as files for legacy tools, as frames arrive (SPEC §15).

files      .part files published complete, HDF5 chunk filters
nxmx       NXmx master files and DECTRIS-style data files of a series
formats    nxmx, hdf5 and tiff: frames of one stream in, files out, checkpoints
stream     one stream's reading loop and its checkpoint beside the files
announce   one AMQP message per complete series or file (Zocalo's shape)
daemon     discovery of streams, metrics, the systemd daemon

Stream patterns follow the one rule of :mod:`hidra_ng.patterns`.
"""
