// Stand-ins with the signatures of Android's android.net classes the docs use.
package android.net

class Network

class ConnectivityManager {
    open class NetworkCallback {
        open fun onAvailable(network: Network) {}
        open fun onLost(network: Network) {}
    }
}
