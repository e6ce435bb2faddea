"""Development tools, not installed: mutation runners that check the tests catch planted bugs."""
