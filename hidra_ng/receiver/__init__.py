"""What runs in the data center: the receiver daemon, its store, groups, queries and api."""
