"""Code shared by the three services: event contracts, settings, Kafka and database plumbing."""
