"""Representation analyses: CKA, MMD, statistics, radiomics and the radiomic lens."""
