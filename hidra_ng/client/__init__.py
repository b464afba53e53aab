"""What a reader imports: the Consumer, the live Subscriber and the HDF5 export."""
