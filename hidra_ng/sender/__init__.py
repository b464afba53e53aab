"""What runs on the detector PC: the Producer, its spool and link, the sender daemon, sources."""
