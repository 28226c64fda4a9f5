"""The inkind coordinator: epochs, persistence, audit and the mechanism library."""
