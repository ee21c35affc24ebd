"""When and where cycles run: the scheduler, the lease around one cycle, RQ workers."""
