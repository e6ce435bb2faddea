"""Development tools (not installed): the mutation runners that check the tests catch planted bugs."""
