"""The views the scenarios request, through Django's real WSGIHandler."""

import json

import psycopg2.extensions
from django.db import connection, transaction
from django.http import HttpResponse

from .models import Counter, Note


def hit(request):
    """The issue's request: atomic() + get_or_create + an UPDATE + a count()."""
    name = request.GET.get("name", "a")
    with transaction.atomic():
        counter, _ = Counter.objects.get_or_create(name=name)
        Counter.objects.filter(pk=counter.pk).update(value=counter.value + 1)
        count = Counter.objects.count()
    return HttpResponse(str(count))


def session(request):
    """What the session looks like to this request, and who serves it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('TimeZone'), current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only'), pg_backend_pid(), current_database(),"
            " current_user, current_setting('application_name')"
        )
        zone, isolation, read_only, pid, database, user, name = cursor.fetchone()
    return HttpResponse(
        json.dumps(
            {
                "time_zone": zone,
                "isolation": isolation,
                "read_only": read_only,
                "pid": pid,
                "database": database,
                "user": user,
                "application_name": name,
            }
        ),
        content_type="application/json",
    )


def dirty(request):
    """A borrower that changes the session: time zone, isolation level, read-only."""
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    connection.connection.set_session(
        isolation_level=psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE, readonly=True
    )
    return session(request)


def slow(request):
    """50 ms in the server: concurrent requests overlap only if the pool lets them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.05)")
    return HttpResponse("slept")


def boom(request):
    """Writes, then raises in the middle of its transaction."""
    with transaction.atomic():
        Counter.objects.create(name=request.GET["name"])
        raise RuntimeError("boom")


def note(request):
    """Writes to both aliases (the router sends Note to "other")."""
    Note.objects.create(text="hello")
    Counter.objects.get_or_create(name="noted")
    return HttpResponse(str(Note.objects.count()))
