# Rules for the trajectory family (filled in by its issue).
