"""Reports: runs -> DataFrame -> the papers' tables with our numbers beside theirs, and figures."""
