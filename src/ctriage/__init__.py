"""ctriage: chest CT triage for COVID-19 pneumonia."""

__version__ = "0.1.0"
