"""The recover-and-relabel family (RLDD, SRe2L, RDED): expert training (GLMC / CE), fair BN
recalibration, crop initialisation, statistic-matching recovery and relabelling.
Spec: statistical_methods.md."""
