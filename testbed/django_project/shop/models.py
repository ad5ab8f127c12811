from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=50, unique=True)
    value = models.IntegerField(default=0)


class Note(models.Model):
    """Lives in the "other" database (routers.py)."""

    text = models.CharField(max_length=100)
