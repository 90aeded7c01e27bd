"""Training stages: teacher, classifier, PTQ, calibration sets, PQCAD."""
