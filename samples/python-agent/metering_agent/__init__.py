"""A provider's client of the Metering server, written from proto/ and its documents alone."""
