from django.urls import path
from shop import views

urlpatterns = [
    path("hit/", views.hit),
    path("session/", views.session),
    path("dirty/", views.dirty),
    path("boom/", views.boom),
    path("slow/", views.slow),
    path("note/", views.note),
]
