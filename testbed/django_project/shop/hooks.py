"""A ``configure`` callback given by dotted path in OPTIONS["pool"] (tests/test_django.py)."""


def name_the_session(conn):
    """Runs once per new connection, after the backend's own set-up."""
    with conn.cursor() as cursor:
        cursor.execute("SET application_name = 'configured-by-hook'")
