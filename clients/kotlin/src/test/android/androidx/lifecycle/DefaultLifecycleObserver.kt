// Stand-ins with the signatures of androidx.lifecycle's observer API the docs use.
package androidx.lifecycle

interface LifecycleOwner

interface DefaultLifecycleObserver {
    fun onStart(owner: LifecycleOwner) {}
    fun onStop(owner: LifecycleOwner) {}
}
