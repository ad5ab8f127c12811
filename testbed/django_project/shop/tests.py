"""What ``manage.py test`` runs (plain and ``--parallel 2``) with the pool in place."""

import threading

from django.db import connection, connections, transaction
from django.test import TestCase, TransactionTestCase

from .models import Counter, Note


class PooledTestCase(TestCase):
    databases = {"default", "other"}

    def test_runs_on_the_test_database(self):
        # The runner renames NAME in place (and --parallel's workers rename it again, to
        # their clone): the pool must follow it.
        for alias in ("default", "other"):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT current_database()")
                name = cursor.fetchone()[0]
            self.assertTrue(name.startswith("test_"), name)
            self.assertEqual(name, connections[alias].settings_dict["NAME"])

    def test_writes_roll_back_between_tests(self):
        Counter.objects.create(name="x")
        Note.objects.create(text="n")
        self.assertEqual(Counter.objects.count(), 1)

    def test_writes_roll_back_between_tests_again(self):
        Counter.objects.create(name="x")
        self.assertEqual(Counter.objects.count(), 1)


class PooledTransactionTestCase(TransactionTestCase):
    def test_threads_share_the_pool(self):
        errors = []

        def work(i):
            try:
                with transaction.atomic():
                    Counter.objects.create(name=f"t{i}")
            except Exception as error:  # reported below
                errors.append(error)
            finally:
                connection.close()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(Counter.objects.count(), 8)
